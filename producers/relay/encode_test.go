package relay

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fedpipe/fedpipe/schema"
)

// hostile are pieces of the strings the encoders are tried on: everything
// the JSON string encoder treats apart (quotes, backslashes, every control
// character but NUL, which PostgreSQL text cannot hold, DEL, HTML
// characters, U+2028 and U+2029, invalid and truncated UTF-8) among plain
// ASCII and multi-byte characters.
var hostile = func() []string {
	p := []string{"", "a", "room", "!r:hs.test", "@u:remote.test", "m.room.member", "m.room.message", `"`, `\`, `\"`, "<", ">", "&", "</script>",
		"\x7f", "é", "日本", "🙂", "\u2028", "\u2029", "\u2027", "\u202a", "\ufffd", "\xff", "\xc3", "\xe2\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "12345678"}
	for c := 1; c < 0x20; c++ {
		p = append(p, string(rune(c)))
	}
	return p
}()

func randomText(r *rand.Rand) string {
	var b strings.Builder
	for n := r.IntN(12); n > 0; n-- {
		b.WriteString(hostile[r.IntN(len(hostile))])
	}
	return b.String()
}

// randomPDU is valid JSON with hostile strings kept as written (escapes,
// spacing, HTML), sometimes large, or sometimes not JSON at all.
func randomPDU(r *rand.Rand) []byte {
	switch r.IntN(40) {
	case 0:
		return nil
	case 1:
		return []byte(`{"a":` + randomText(r)) // not JSON
	case 2:
		big := bytes.Repeat([]byte(`"\u00e9 <b>x</b> \\ \"q\"",`), 4000+r.IntN(4000))
		return append(append([]byte(`{"content": [`), big...), `0], "n" : 1 }`...)
	}
	v, _ := json.Marshal(map[string]any{"body": randomText(r), "n": r.Int64(), "k": []string{randomText(r)}})
	if r.IntN(2) == 0 {
		v = bytes.ReplaceAll(v, []byte(`,`), []byte(" ,\n\t"))
	}
	return v
}

func orNil(r *rand.Rand, s string) []byte {
	if s == "" && r.IntN(2) == 0 {
		return nil // a NULL column
	}
	return []byte(s)
}

// The room stream's encoders give exactly the bytes of schema's
// RoomRecord.Marshal and StateKey (which the consumers decode and schema's
// tests pin) for any row, within their bounds, and refuse a PDU that is not
// JSON as Marshal does.
func TestEncodersMatchSchemaMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(18, 2))
	types := []string{"m.room.member", "m.room.message", ""}
	for i := range 20000 {
		e := eventFields{position: r.Int64N(1 << 40), eventID: []byte(randomText(r)), roomID: []byte(randomText(r)), roomVersion: orNil(r, randomText(r)),
			sender: orNil(r, randomText(r)), origin: orNil(r, randomText(r)), typ: []byte(types[r.IntN(3)] + randomText(r)), pdu: randomPDU(r)}
		if r.IntN(3) > 0 {
			e.typ = []byte(types[r.IntN(3)])
		}
		rec := schema.RoomRecord{V: schema.SchemaVersion, Kind: schema.KindEvent, Position: e.position, EventID: string(e.eventID), RoomID: string(e.roomID),
			RoomVersion: string(e.roomVersion), Sender: string(e.sender), Origin: string(e.origin), Type: string(e.typ), PDU: e.pdu}
		if r.IntN(2) == 0 {
			sk := randomText(r)
			e.stateKey, rec.StateKey = []byte(sk), &sk
		}
		want, wantErr := rec.Marshal()
		got, err := appendEvent(nil, &e)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("event %d: error %v, Marshal's %v\n%+v", i, err, wantErr, rec)
		}
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("event %d:\n%q\nMarshal gives\n%q", i, got, want)
		}
		if len(got) > e.bound() {
			t.Fatalf("event %d: %d bytes, bound %d", i, len(got), e.bound())
		}
		if err == nil {
			checkPositionAndRoom(t, got, eventPrefix, e.position, e.roomID)
		}

		d := deltaFields{position: r.Int64N(1 << 40), roomID: []byte(randomText(r)), typ: []byte(types[r.IntN(3)]), stateKey: []byte(randomText(r)), eventID: []byte(randomText(r)),
			prevEventID: orNil(r, randomText(r)), membership: orNil(r, []string{"", "join", "leave", randomText(r)}[r.IntN(4)]), prevMembership: orNil(r, []string{"", "invite", randomText(r)}[r.IntN(3)])}
		if r.IntN(4) == 0 {
			d.typ = []byte(randomText(r))
		}
		sk := string(d.stateKey)
		drec := schema.RoomRecord{V: schema.SchemaVersion, Kind: schema.KindStateDelta, Position: d.position, RoomID: string(d.roomID), Type: string(d.typ), StateKey: &sk,
			EventID: string(d.eventID), PrevEventID: string(d.prevEventID), Membership: string(d.membership), PrevMembership: string(d.prevMembership)}
		want, err = drec.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if got := appendDelta(nil, &d); !bytes.Equal(got, want) {
			t.Fatalf("delta %d:\n%q\nMarshal gives\n%q", i, got, want)
		} else if len(got) > d.bound() {
			t.Fatalf("delta %d: %d bytes, bound %d", i, len(got), d.bound())
		} else {
			checkPositionAndRoom(t, got, deltaPrefix, d.position, d.roomID)
		}
		want = schema.StateKey(drec.RoomID, drec.Type, sk)
		if got := appendStateKey(nil, &d); !bytes.Equal(got, want) {
			t.Fatalf("state key %d:\n%q\nStateKey gives\n%q", i, got, want)
		} else if len(got) > d.stateKeyBound() {
			t.Fatalf("state key %d: %d bytes, bound %d", i, len(got), d.stateKeyBound())
		}
	}
}

// checkPositionAndRoom checks that the position header and key taken from a
// record's bytes are the position's digits and the room ID, the key taken
// whenever the room ID needs no escaping.
func checkPositionAndRoom(t *testing.T, value []byte, prefix string, position int64, roomID []byte) {
	t.Helper()
	pos, room := positionAndRoom(value, prefix, position, roomID)
	if string(pos) != strconv.FormatInt(position, 10) {
		t.Fatalf("position %q of %d in %q", pos, position, value)
	}
	if esc := appendString(nil, roomID, false); room == nil && len(esc) == len(roomID)+2 && utf8.Valid(roomID) && !bytes.ContainsFunc(roomID, func(r rune) bool { return r >= 0x80 }) {
		t.Fatalf("room ID %q needs no escaping, but was not taken from %q", roomID, value)
	} else if room != nil && !bytes.Equal(room, roomID) {
		t.Fatalf("room ID %q taken from %q as %q", roomID, value, room)
	}
}

// digits counts what strconv.AppendInt appends.
func TestDigits(t *testing.T) {
	for _, n := range []int64{0, 1, 9, 10, 99, 100, 12345, 1 << 40, math.MaxInt64, -1, -9, -10, -12345, math.MinInt64} {
		if got, want := digits(n), len(strconv.FormatInt(n, 10)); got != want {
			t.Errorf("digits(%d) = %d, want %d", n, got, want)
		}
	}
}

// An arena's values never overlap, whatever their sizes, and a value that
// outgrows its bound is kept whole.
func TestArena(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var a arena
	var kept [][]byte
	for i := range 5000 {
		n := r.IntN(3000)
		if i%100 == 0 {
			n = r.IntN(100 << 10)
		}
		grow := 0
		if i%7 == 0 {
			grow = 10 // outgrows what it asked for
		}
		v := a.keep(append(a.alloc(n), bytes.Repeat([]byte{byte(i)}, n+grow)...))
		if cap(v) != len(v) || len(v) != n+grow {
			t.Fatalf("value %d: length %d capacity %d, want %d", i, len(v), cap(v), n+grow)
		}
		kept = append(kept, v)
	}
	for i, v := range kept {
		if !bytes.Equal(v, bytes.Repeat([]byte{byte(i)}, len(v))) {
			t.Fatalf("value %d was overwritten", i)
		}
	}
}

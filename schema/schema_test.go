package schema_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

func TestMigrateConcurrentlyAndTwice(t *testing.T) {
	pool := testenv.Pool(t, testenv.Database(t))
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = schema.Migrate(ctx, pool) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil || n == 0 {
		t.Fatalf("migrations recorded: %d, %v", n, err)
	}
	if _, err := pool.Exec(ctx, "SELECT fedpipe_next_stream_ordering()"); err != nil {
		t.Fatal(err)
	}
}

func TestRecordsValidate(t *testing.T) {
	sk := "@b:remote.test"
	good := []struct {
		stream string
		rec    any
	}{
		{"room", schema.RoomRecord{V: 1, Kind: schema.KindEvent, Position: 3, RoomID: "!r:hs.test", RoomVersion: "10", EventID: "$e", Sender: "@a:hs.test", Origin: "hs.test", Type: "m.room.member", StateKey: &sk, PDU: json.RawMessage(`{"type":"m.room.member"}`)}},
		{"room", schema.RoomRecord{V: 1, Kind: schema.KindStateDelta, Position: 3, RoomID: "!r:hs.test", Type: "m.room.member", StateKey: &sk, EventID: "$e", Membership: "join"}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindPDU, Destination: "remote.test", RoomID: "!r:hs.test", EventID: "$e", Position: 3, RoomVersion: "10", PDU: json.RawMessage(`{}`)}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindEDU, Destination: "remote.test", EDUType: "m.typing", Content: json.RawMessage(`{}`)}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindEDU, Destination: "remote.test", EDUType: "m.typing", Content: json.RawMessage(`{}`), EDUKey: "!r:hs.test @a:hs.test"}},
		{"typing", schema.TypingRecord{V: 1, Kind: schema.KindTyping, RoomID: "!r:hs.test", UserID: "@a:hs.test", Typing: true, TimeoutMS: 30000, TS: 5}},
		{"receipts", schema.ReceiptRecord{V: 1, Kind: schema.KindReceipt, Position: 7, Receipt: schema.Receipt{RoomID: "!r:hs.test", UserID: "@a:hs.test", EventIDs: []string{"$e"}, ThreadID: "main", TS: 5}}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindReceipt, Destination: "remote.test", Receipts: []schema.Receipt{{RoomID: "!r:hs.test", UserID: "@a:hs.test", EventIDs: []string{"$e"}, TS: 5}}}},
		{"devicelists", schema.DeviceListRecord{V: 1, Kind: schema.KindDeviceList, Position: 6, UserID: "@a:hs.test", DeviceID: "D", EDUType: schema.EDUDeviceListUpdate, Content: json.RawMessage(`{"deleted":true}`)}},
		{"devicelists", schema.DeviceListRecord{V: 1, Kind: schema.KindDeviceList, Position: 6, UserID: "@a:hs.test", EDUType: schema.EDUSigningKeyUpdate, Content: json.RawMessage(`{"user_id":"@a:hs.test"}`)}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindDeviceList, Destination: "remote.test", Position: 6, UserID: "@a:hs.test", DeviceID: "D", EDUType: schema.EDUDeviceListUpdate, Content: json.RawMessage(`{}`)}},
		{"typing", schema.TypingRecord{V: 1, Kind: schema.KindTyping, RoomID: "!r:hs.test", UserID: "@a:hs.test", TS: 5}},
		{"outbound", schema.OutboundRecord{V: 1, Kind: schema.KindToDevice, Destination: "remote.test", Position: 4, MessageID: "m1", Content: json.RawMessage(`{"message_id":"m1"}`)}},
	}
	for _, g := range good {
		raw, _ := json.Marshal(g.rec)
		if err := schema.ValidateRecord(g.stream, raw); err != nil {
			t.Errorf("%s: %v\n%s", g.stream, err, raw)
		}
	}
	for _, bad := range []struct{ stream, raw string }{
		{"room", `{"v":1,"kind":"event","position":3,"room_id":"!r:hs"}`},
		{"room", `{"v":2,"kind":"state_delta","position":3,"room_id":"!r:hs","type":"t","state_key":"","event_id":""}`},
		{"outbound", `{"v":1,"kind":"pdu","destination":"d","room_id":"!r:hs","event_id":"$e","position":0,"room_version":"10","pdu":{}}`},
		{"outbound", `{"v":1,"kind":"edu","destination":"d","edu_type":"m.typing","content":[]}`},
		{"outbound", `{"v":1,"kind":"to_device","destination":"d","position":4,"content":{}}`},
		{"typing", `{"v":1,"kind":"typing","room_id":"!r:hs","user_id":"@a:hs","typing":true,"timeout_ms":999999,"ts":5}`},
		{"devicelists", `{"v":1,"kind":"device_list","position":6,"user_id":"@a:hs","edu_type":"m.device_list_update","content":{}}`},
		{"receipts", `{"v":1,"kind":"receipt","position":7,"room_id":"!r:hs","user_id":"@a:hs","event_ids":[],"ts":5}`},
		{"outbound", `{"v":1,"kind":"receipt","destination":"d","receipts":[{"room_id":"!r:hs","user_id":"@a:hs","event_ids":["e"],"ts":5}]}`},
		{"outbound", `{"v":1,"kind":"device_list","destination":"d","position":6,"user_id":"@a:hs","device_id":"D","edu_type":"m.typing","content":{}}`},
		{"outbound", `{"v":1,"kind":"to_device","destination":"d","position":0,"message_id":"m","content":{}}`},
	} {
		if err := schema.ValidateRecord(bad.stream, []byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
			t.Errorf("accepted %s: %v", bad.raw, err)
		}
		if bad.stream == "room" {
			if _, err := schema.DecodeRoomRecord([]byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
				t.Errorf("DecodeRoomRecord accepted %s", bad.raw)
			}
		} else if bad.stream == "receipts" {
			if _, err := schema.DecodeReceiptRecord([]byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
				t.Errorf("DecodeReceiptRecord accepted %s", bad.raw)
			}
		} else if bad.stream == "devicelists" {
			if _, err := schema.DecodeDeviceListRecord([]byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
				t.Errorf("DecodeDeviceListRecord accepted %s", bad.raw)
			}
		} else if bad.stream == "typing" {
			if _, err := schema.DecodeTypingRecord([]byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
				t.Errorf("DecodeTypingRecord accepted %s", bad.raw)
			}
		} else if _, err := schema.DecodeOutboundRecord([]byte(bad.raw)); !errors.Is(err, schema.ErrInvalidRecord) {
			t.Errorf("DecodeOutboundRecord accepted %s", bad.raw)
		}
	}
}

package sender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fedpipe/fedpipe/consumers/sender"
	"github.com/fedpipe/fedpipe/federation/queue"
	"github.com/fedpipe/fedpipe/internal/testing/testenv"
	"github.com/fedpipe/fedpipe/schema"
)

// deviceUpdate is an outbound device-list record for dest.
func deviceUpdate(dest, user, device string, pos int64) schema.OutboundRecord {
	typ, content := schema.EDUDeviceListUpdate, fmt.Sprintf(`{"keys":{"n":%d}}`, pos)
	if device == "" {
		typ, content = schema.EDUSigningKeyUpdate, fmt.Sprintf(`{"master_key":{"n":%d},"user_id":%q}`, pos, user)
	}
	return schema.OutboundRecord{V: 1, Kind: schema.KindDeviceList, Destination: dest, Position: pos, UserID: user, DeviceID: device, EDUType: typ, Content: json.RawMessage(content)}
}

// pending describes dest's device-list EDUs as the queue reads them:
// "user/device@stream_id<prev_ids" or "user/signing@position".
func pending(t *testing.T, s *sender.Store, dest string) (out []string, positions []int64) {
	t.Helper()
	edus, err := s.StoredEDUs(context.Background(), dest, queue.DeviceLists, 0, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range edus {
		positions = append(positions, e.Position)
		if e.EDU.Type == schema.EDUSigningKeyUpdate {
			var c struct {
				User string `json:"user_id"`
			}
			_ = json.Unmarshal(e.EDU.Content, &c)
			out = append(out, fmt.Sprintf("%s/signing@%d", c.User, e.Position))
			continue
		}
		var c struct {
			User     string  `json:"user_id"`
			Device   string  `json:"device_id"`
			StreamID int64   `json:"stream_id"`
			PrevID   []int64 `json:"prev_id"`
		}
		if err := json.Unmarshal(e.EDU.Content, &c); err != nil || c.PrevID == nil {
			t.Fatalf("EDU %s: %v (prev_id must be present)", e.EDU.Content, err)
		}
		out = append(out, fmt.Sprintf("%s/%s@%d<%v", c.User, c.Device, c.StreamID, c.PrevID))
	}
	return out, positions
}

// deviceListStore is a sender store on a fresh database, and put, which
// stores device-list records in it.
func deviceListStore(t *testing.T) (*sender.Store, *pgxpool.Pool, func(...schema.OutboundRecord)) {
	t.Helper()
	pool := testenv.Pool(t, testenv.Database(t))
	if err := schema.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	s := sender.NewStore(pool)
	return s, pool, func(recs ...schema.OutboundRecord) {
		t.Helper()
		if err := s.StoreDeviceLists(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
}

// The store keeps the newest update per (user, device) to send, gives each
// the prev_id of the user's previous update (acknowledged, or before it in
// the page), moves the chain on acknowledgement (an update superseded while
// in flight included), ignores replays of acknowledged updates, and, for a
// destination failing for over a day, keeps the newest update per user and
// restarts the chains.
func TestDeviceListStoreKeepsTheChain(t *testing.T) {
	ctx := context.Background()
	s, pool, put := deviceListStore(t)
	check := func(want ...string) []int64 {
		t.Helper()
		got, pos := pending(t, s, "r.test")
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("pending\n got %v\nwant %v", got, want)
		}
		return pos
	}
	put(deviceUpdate("r.test", "@u:hs", "D", 10), deviceUpdate("r.test", "@u:hs", "E", 11), deviceUpdate("r.test", "@u:hs", "D", 12),
		deviceUpdate("r.test", "@v:hs", "D", 13), deviceUpdate("r.test", "@u:hs", "", 14), deviceUpdate("other.test", "@u:hs", "D", 10))
	check("@u:hs/E@11<[]", "@u:hs/D@12<[11]", "@v:hs/D@13<[]", "@u:hs/signing@14")

	// D@12 is superseded by D@15 while in flight: its acknowledgement still
	// moves the chain, and D@15 follows it.
	put(deviceUpdate("r.test", "@u:hs", "D", 15))
	if err := s.AckEDUs(ctx, "r.test", queue.DeviceLists, []int64{11, 12}); err != nil {
		t.Fatal(err)
	}
	check("@v:hs/D@13<[]", "@u:hs/signing@14", "@u:hs/D@15<[12]")
	put(deviceUpdate("r.test", "@u:hs", "E", 11)) // a replay of an acknowledged update
	check("@v:hs/D@13<[]", "@u:hs/signing@14", "@u:hs/D@15<[12]")
	if err := s.AckEDUs(ctx, "r.test", queue.DeviceLists, []int64{13, 14, 15}); err != nil {
		t.Fatal(err)
	}
	check()
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM sender_device_lists WHERE destination = 'r.test'`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("%d rows left after every update was acknowledged (%v)", rows, err)
	}

	// r.test fails for two days while @u changes two devices twice.
	put(deviceUpdate("r.test", "@u:hs", "D", 20), deviceUpdate("r.test", "@u:hs", "E", 21), deviceUpdate("r.test", "@u:hs", "D", 22), deviceUpdate("r.test", "@v:hs", "F", 23))
	if err := s.SaveRetry(ctx, "r.test", queue.RetryState{Interval: time.Hour, NextAttempt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE sender_destinations SET failure_ts = $1 WHERE destination = 'r.test'`, time.Now().Add(-48*time.Hour).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	check("@u:hs/D@22<[]", "@v:hs/F@23<[]")
	// Collapsed once per run of failures: an update stored afterwards chains on.
	if err := s.AckEDUs(ctx, "r.test", queue.DeviceLists, []int64{22}); err != nil {
		t.Fatal(err)
	}
	put(deviceUpdate("r.test", "@u:hs", "G", 24))
	check("@v:hs/F@23<[]", "@u:hs/G@24<[22]")
	// other.test was untouched throughout.
	if got, _ := pending(t, s, "other.test"); strings.Join(got, " ") != "@u:hs/D@10<[]" {
		t.Fatalf("other.test pending %v", got)
	}
}

// Updates left marked as being sent (their sender was killed mid-send, or
// before it deleted them) may be at the destination: the user's updates that
// supersede them chain on the newest such one instead of restarting with
// prev_id []. Marks cleared (the destination refused the transaction) do not
// count, nor do marks above an update.
func TestDeviceListMarksOutliveTheirSender(t *testing.T) {
	ctx := context.Background()
	s, _, put := deviceListStore(t)
	mark := func(sending bool, positions ...int64) {
		t.Helper()
		if err := s.MarkSending(ctx, "r.test", queue.DeviceLists, positions, sending); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want ...string) {
		t.Helper()
		if got, _ := pending(t, s, "r.test"); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("pending\n got %v\nwant %v", got, want)
		}
	}
	put(deviceUpdate("r.test", "@u:hs", "D", 10), deviceUpdate("r.test", "@u:hs", "E", 11), deviceUpdate("r.test", "@v:hs", "D", 12))
	mark(true, 10, 11, 12)
	mark(false, 12) // @v's transaction was refused
	// The sender dies; @u re-keys D and @v re-keys D.
	put(deviceUpdate("r.test", "@u:hs", "D", 20), deviceUpdate("r.test", "@v:hs", "D", 21))
	check("@u:hs/E@11<[10]", "@u:hs/D@20<[11]", "@v:hs/D@21<[]")
	// Sent again as they were: E@11, still marked, keeps its prev_id.
	if err := s.AckEDUs(ctx, "r.test", queue.DeviceLists, []int64{11, 20, 21}); err != nil {
		t.Fatal(err)
	}
	check()
	put(deviceUpdate("r.test", "@u:hs", "E", 30))
	check("@u:hs/E@30<[20]")
}

package txn_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/edu"
	"github.com/fedpipe/fedpipe/federation/signing"
	"github.com/fedpipe/fedpipe/federation/txn"
	"github.com/fedpipe/fedpipe/federation/xmatrix"
)

// BenchmarkBuildSignTransaction builds a full transaction (50 PDUs of about 500
// bytes, 100 EDUs), encodes its body and signs the request, as the sender does
// for each transaction it sends.
func BenchmarkBuildSignTransaction(b *testing.B) {
	k, err := signing.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	pdus := make([]json.RawMessage, txn.MaxPDUs)
	for i := range pdus {
		pdus[i] = json.RawMessage(fmt.Sprintf(`{"auth_events":["$a","$b","$c"],"content":{"body":%q,"msgtype":"m.text"},"depth":%d,"hashes":{"sha256":"thishashcoversallfieldsincasethisisredactedAAAAAAAA"},"origin_server_ts":1404838188000,"prev_events":["$prev"],"room_id":"!abc123:matrix.org","sender":"@someone:matrix.org","signatures":{"matrix.org":{"ed25519:key_version":"these86bytesofbase64signaturecoveressentialfieldsincludinghashessocancheckredactedpdus"}},"type":"m.room.message"}`, strings.Repeat("x", 100), i))
	}
	typing, err := edu.Typing{RoomID: "!abc123:matrix.org", UserID: "@someone:matrix.org", Typing: true}.EDU()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tx := txn.Transaction{ID: "1700000000000.1", Origin: "matrix.org", Destination: "remote.example", OriginServerTS: 1700000000000}
		for _, p := range pdus {
			if err := tx.AddPDU(p); err != nil {
				b.Fatal(err)
			}
		}
		for j := 0; j < txn.MaxEDUs; j++ {
			if err := tx.AddEDU(typing); err != nil {
				b.Fatal(err)
			}
		}
		body, canonical, err := tx.Encode()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := xmatrix.AuthorizationCanonical(tx.Origin, tx.Destination, k, "PUT", tx.Path(), canonical); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(body)))
	}
}

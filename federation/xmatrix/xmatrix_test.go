package xmatrix

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/fedpipe/fedpipe/federation/canonicaljson"
	"github.com/fedpipe/fedpipe/federation/signing"
)

// specKey is the key of the specification's cryptographic test vectors.
func specKey(t *testing.T) *signing.Key {
	t.Helper()
	seed, err := base64.RawStdEncoding.DecodeString("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
	if err != nil {
		t.Fatal(err)
	}
	k, err := signing.NewKey("1", seed)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The header's signature must be the one the spec's JSON signing algorithm
// gives for the request object, computed here the slow, independent way.
func TestAuthorizationMatchesSignJSON(t *testing.T) {
	k := specKey(t)
	for _, tc := range []struct {
		name    string
		content []byte
	}{
		{"with body", []byte(`{"pdus": [{"b":1,"a":"\u00e9"}], "origin": "o.example", "origin_server_ts": 1e3}`)},
		{"empty object body", []byte(`{}`)},
		{"no body", nil},
		{"empty body", []byte{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"method": "PUT", "uri": "/_matrix/federation/v1/send/a%2Fb?x=\"y\"", "origin": "o.example", "destination": "d.example:8448"}
			if len(tc.content) > 0 {
				req["content"] = json.RawMessage(tc.content)
			}
			obj, err := json.Marshal(req)
			if err != nil {
				t.Fatal(err)
			}
			signed, err := signing.SignJSON("o.example", k, obj)
			if err != nil {
				t.Fatal(err)
			}
			var out struct {
				Signatures map[string]map[string]string `json:"signatures"`
			}
			if err := json.Unmarshal(signed, &out); err != nil {
				t.Fatal(err)
			}
			want := out.Signatures["o.example"]["ed25519:1"]
			hv, err := Authorization("o.example", "d.example:8448", k, "PUT", req["uri"].(string), tc.content)
			if err != nil {
				t.Fatal(err)
			}
			h, err := Parse(hv)
			if err != nil {
				t.Fatal(err)
			}
			if h.Signature != want {
				t.Fatalf("header %s\nsignature %s, SignJSON gives %s", hv, h.Signature, want)
			}
			rb, err := RequestBytes("PUT", req["uri"].(string), "o.example", "d.example:8448", tc.content)
			if err != nil {
				t.Fatal(err)
			}
			if err := canonicaljson.Check(rb); err != nil {
				t.Fatalf("RequestBytes not canonical: %v: %s", err, rb)
			}
		})
	}
}

func TestAuthorizationRejectsBadContent(t *testing.T) {
	k := specKey(t)
	for name, body := range map[string]string{"not JSON": `{"a":`, "float": `{"a":0.5}`, "duplicate key": `{"a":1,"a":1}`} {
		if _, err := Authorization("o", "d", k, "PUT", "/x", []byte(body)); !errors.Is(err, canonicaljson.ErrNotCanonicalizable) {
			t.Errorf("%s: error %v", name, err)
		}
	}
	if _, err := Authorization("o\xff", "d", k, "PUT", "/x", nil); err == nil {
		t.Error("invalid UTF-8 origin accepted")
	}
}

func TestAuthorizationRoundTrip(t *testing.T) {
	k, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"origin":"a.example","pdus":[]}`)
	hv, err := Authorization("a.example", "b.example", k, "PUT", "/_matrix/federation/v1/send/1%2F2", body)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Parse(hv)
	if err != nil {
		t.Fatal(err)
	}
	if h.Origin != "a.example" || h.Destination != "b.example" || h.KeyID != k.ID {
		t.Fatalf("parsed %+v", h)
	}
	if err := Verify(h, "PUT", "/_matrix/federation/v1/send/1%2F2", "b.example", body, k.Public()); err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, tc := range []struct {
		name              string
		method, uri, dest string
		body              []byte
	}{
		{"other method", "POST", "/_matrix/federation/v1/send/1%2F2", "b.example", body},
		{"other uri", "PUT", "/_matrix/federation/v1/send/1/2", "b.example", body},
		{"other destination", "PUT", "/_matrix/federation/v1/send/1%2F2", "c.example", body},
		{"other body", "PUT", "/_matrix/federation/v1/send/1%2F2", "b.example", []byte(`{"origin":"a.example","pdus":[1]}`)},
		{"no body", "PUT", "/_matrix/federation/v1/send/1%2F2", "b.example", nil},
	} {
		if err := Verify(h, tc.method, tc.uri, tc.dest, tc.body, k.Public()); !errors.Is(err, signing.ErrBadSignature) {
			t.Errorf("%s: verified: %v", tc.name, err)
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Header
	}{
		{"spec example", `X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF"`,
			Header{"origin.hs.example.com", "destination.hs.example.com", "ed25519:key1", "ABCDEF"}},
		{"scheme and names case-insensitive", `x-matrix ORIGIN="o",Key="ed25519:1",SIG="s"`, Header{Origin: "o", KeyID: "ed25519:1", Signature: "s"}},
		{"unquoted values and spaces", `X-Matrix origin=o.example , key="ed25519:1",  sig=abc+/`, Header{Origin: "o.example", KeyID: "ed25519:1", Signature: "abc+/"}},
		{"escapes", `X-Matrix origin="o\"x\\",key="k",sig="s"`, Header{Origin: `o"x\`, KeyID: "k", Signature: "s"}},
		{"unknown ignored", `X-Matrix origin="o",extra="1",key="k",sig="s"`, Header{Origin: "o", KeyID: "k", Signature: "s"}},
		{"port in origin", `X-Matrix origin="o.example:8448",key="k",sig="s"`, Header{Origin: "o.example:8448", KeyID: "k", Signature: "s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", ``, "scheme"},
		{"bearer", `Bearer abc`, "scheme"},
		{"missing sig", `X-Matrix origin="o",key="k"`, "missing sig"},
		{"missing origin", `X-Matrix key="k",sig="s"`, "missing origin"},
		{"duplicate", `X-Matrix origin="o",origin="p",key="k",sig="s"`, "twice"},
		{"unterminated", `X-Matrix origin="o,key=k,sig=s`, "unterminated"},
		{"no equals", `X-Matrix origin`, "name=value"},
		{"garbage after value", `X-Matrix origin="o"x,key="k",sig="s"`, "expected ','"},
		{"control char", "X-Matrix origin=\"o\x01\",key=\"k\",sig=\"s\"", "control"},
		{"quote in unquoted value", `X-Matrix origin=o"x,key=k,sig=s`, "unquoted"},
		{"empty value", `X-Matrix origin=,key=k,sig=s`, "empty value"},
		{"unterminated escape", `X-Matrix origin="o\`, "escape"},
		{"too long", "X-Matrix origin=\"" + strings.Repeat("a", MaxHeaderLength) + "\"", "longer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) error %v, want %q", tc.in, err, tc.want)
			}
		})
	}
}

// FuzzParse checks the parser never panics, and that what it accepts it can
// render and parse again to the same header.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`X-Matrix origin="o",destination="d",key="ed25519:1",sig="abc"`,
		`x-matrix origin=o,key=k,sig=s`,
		`X-Matrix origin="a\"b",key="k",sig="s",x=y`,
		`X-Matrix ,,,`,
		"X-Matrix origin=a\x01b,key=k,sig=s", // parsed once, its rendering did not
		"X-Matrix origin=o,key=k\x7f,sig=s",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		h, err := Parse(in)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		again := `X-Matrix origin="` + quote(h.Origin) + `",destination="` + quote(h.Destination) + `",key="` + quote(h.KeyID) + `",sig="` + quote(h.Signature) + `"`
		h2, err := Parse(again)
		if err != nil || h2 != h {
			t.Fatalf("re-rendered %+v as %q: %+v, %v", h, again, h2, err)
		}
	})
}

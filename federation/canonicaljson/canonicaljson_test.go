package canonicaljson

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The examples of the specification's appendix "Canonical JSON", plus the escapes
// its grammar defines.
func TestCanonicalizeSpecExamples(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty object", `{}`, `{}`},
		{"whitespace", "{\n    \"one\": 1,\n    \"two\": \"Two\"\n}", `{"one":1,"two":"Two"}`},
		{"key order", "{\n    \"b\": \"2\",\n    \"a\": \"1\"\n}", `{"a":"1","b":"2"}`},
		{"key order compact", `{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`},
		{"nested", `{"auth":{"success":true,"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email","address":"john.doe@example.org"},{"medium":"msisdn","address":"123456789"}]}}}`,
			`{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}`},
		{"utf-8 kept", `{"a": "日本語"}`, `{"a":"日本語"}`},
		{"code point key order", `{"本": 2, "日": 1}`, `{"日":1,"本":2}`},
		{"unicode escape decoded", `{"a": "\u65E5"}`, `{"a":"日"}`},
		{"null", `{"a": null}`, `{"a":null}`},
		{"short escapes", `"\u0008\u000c\u000a\u000d\u0009"`, `"\b\f\n\r\t"`},
		{"other control chars lower-case hex", `"\u001F\u0000"`, `"\u001f\u0000"`},
		{"solidus unescaped", `"a\/b"`, `"a/b"`},
		{"html chars raw", `"\u003c\u003e\u0026"`, `"<>&"`},
		{"surrogate pair", `"\ud83d\ude00"`, `"😀"`},
		{"u2028 raw", `"\u2028"`, "\"\u2028\""},
		{"negative zero", `-0`, `0`},
		{"largest integers", `[9007199254740991,-9007199254740991]`, `[9007199254740991,-9007199254740991]`},
		{"array spacing", `[ 1 , [ ] , { } ]`, `[1,[],{}]`},
		{"spec: negative zero and exponent", "{\n    \"a\": -0,\n    \"b\": 1e10\n}", `{"a":0,"b":10000000000}`},
		{"integral fraction", `[1.0,10.50e1,0.05e2,-2.000]`, `[1,105,5,-2]`},
		{"exponent forms", `[1E+2,1000e-3,0e999999999999999999999,-0.0]`, `[100,1,0,0]`},
		{"largest via exponent", `9.007199254740991e15`, `9007199254740991`},
		{"escaped key sorted by decoded value", `{"b":1,"\u0061":2}`, `{"a":2,"b":1}`},
		{"escapes kept where required", `"\"\\\u000b\u007f"`, "\"\\\"\\\\\\u000b\u007f\""},
		{"key needing escapes", `{"a\nb":1}`, `{"a\nb":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonicalize([]byte(tc.in))
			if err != nil {
				t.Fatalf("Canonicalize(%s): %v", tc.in, err)
			}
			if string(got) != tc.want {
				t.Fatalf("Canonicalize(%s) = %s, want %s", tc.in, got, tc.want)
			}
			if err := Check(got); err != nil {
				t.Fatalf("Check of canonical output: %v", err)
			}
		})
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"float", `{"a":1.5}`, "floats"},
		{"negative exponent", `1e-3`, "floats"},
		{"tiny", `1e-400`, "floats"},
		{"exponent too large", `1e16`, "outside"},
		{"exponent huge", `1e99999999999999999999`, "outside"},
		{"fraction without digits", `1.`, "fraction needs digits"},
		{"exponent without digits", `1e+`, "exponent needs digits"},
		{"lone minus", `-`, "needs digits"},
		{"too large", `9007199254740992`, "outside"},
		{"too small", `-9007199254740992`, "outside"},
		{"huge", `123456789012345678901234567890`, "outside"},
		{"duplicate key", `{"a":1,"a":2}`, "duplicate"},
		{"duplicate key via escape", `{"a":1,"\u0061":2}`, "duplicate"},
		{"nested duplicate key", `[{"x":{"k":1,"k":1}}]`, "duplicate"},
		{"invalid utf-8", "\"\xff\"", "UTF-8"},
		{"lone surrogate", `"\ud83d"`, "surrogate"},
		{"low surrogate first", `"\ude00\ud83d"`, "surrogate"},
		{"control char", "\"a\x01\"", "control"},
		{"trailing data", `{} {}`, "after the document"},
		{"unterminated", `{"a":`, "end of input"},
		{"leading zero", `01`, "leading zero"},
		{"bad escape", `"\x"`, "escape"},
		{"deep nesting", strings.Repeat("[", MaxDepth+2) + strings.Repeat("]", MaxDepth+2), "nesting"},
		{"empty", ``, "end of input"},
		{"bare word", `nul`, "unexpected character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Canonicalize([]byte(tc.in))
			if err == nil || !errors.Is(err, ErrNotCanonicalizable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Canonicalize(%q) error = %v, want one mentioning %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestCheckRejectsNonCanonical(t *testing.T) {
	for _, in := range []string{`{"b":1,"a":2}`, `{ }`, `"\u65e5"`, `"\/"`} {
		if err := Check([]byte(in)); err == nil {
			t.Errorf("Check(%s) accepted non-canonical input", in)
		}
	}
}

func TestMarshal(t *testing.T) {
	got, err := Marshal(map[string]any{"z": []int{1, 2}, "a": "<b>", "m": json.RawMessage(`{"y": 1, "x": 2}`)})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":"<b>","m":{"x":2,"y":1},"z":[1,2]}`; string(got) != want {
		t.Fatalf("Marshal = %s, want %s", got, want)
	}
	if _, err := Marshal(map[string]any{"f": 0.5}); err == nil {
		t.Fatal("Marshal accepted a float")
	}
}

// FuzzCanonicalize checks that any input either fails cleanly or canonicalizes to
// a fixed point that means the same as the input. Seeds are in testdata/fuzz and
// run with every `go test`.
func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{`{}`, `{"b":1,"a":[true,false,null]}`, `"\ud83d\ude00"`, `[1,-2,"\u0000"]`, `{"a":{"b":{"c":"日本"}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonicalize(in)
		if err != nil {
			if !errors.Is(err, ErrNotCanonicalizable) {
				t.Fatalf("error does not wrap ErrNotCanonicalizable: %v", err)
			}
			return
		}
		if err := Check(out); err != nil {
			t.Fatalf("output %q is not a fixed point: %v", out, err)
		}
		var a, b any
		if err := json.Unmarshal(in, &a); err != nil {
			t.Fatalf("accepted input encoding/json rejects: %q: %v", in, err)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("output is not JSON: %q: %v", out, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("meaning changed: %q -> %q", in, out)
		}
	})
}

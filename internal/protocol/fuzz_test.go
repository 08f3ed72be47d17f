package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// The decoder never panics; what it accepts survives a round trip through
// the encoder; what it refuses is bad_request; and the id it hands back is
// one that a reply can echo as JSON. Seed corpus: testdata/fuzz/FuzzDecodeCommand.
func FuzzDecodeCommand(f *testing.F) {
	for _, seed := range []string{
		`{"type":"join","id":1,"room":"lobby","since":{"epoch":"e","seq":3}}`,
		`{"type":"send","id":"a","room":"r","text":"hi\nthere","key":"k"}`,
		`{"type":"history","room":"r","before":10,"limit":0}`,
		`{"type":"send","id":7,"room":5}`,
		`{"id":null}`, `{"id":{}}`, `{"id":[1]}`, `{"id":-0.5e3}`,
		`not json`, `{"type":"x","id":"\ud800"}`, `[]`, `""`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := DecodeCommand(line)
		if !validID(cmd.ID) {
			t.Fatalf("%q: id %q is not a string or a number", line, cmd.ID)
		}
		answer := Reply{Type: "reply", ID: cmd.ID, Result: struct{}{}}
		if err != nil {
			if err.Code != CodeBadRequest {
				t.Fatalf("%q: code %s, want bad_request", line, err.Code)
			}
			answer = Reply{Type: "reply", ID: cmd.ID, Err: err}
		}
		if cmd.ID != nil {
			if b, encErr := Encode(answer); encErr != nil || !json.Valid(b) {
				t.Fatalf("%q: the reply %q does not encode: %v", line, b, encErr)
			}
		}
		if err != nil {
			return
		}
		b, encErr := json.Marshal(cmd)
		if encErr != nil {
			t.Fatalf("%q: decoded %+v does not encode: %v", line, cmd, encErr)
		}
		again, err := DecodeCommand(b)
		if err == nil && sameJSON(t, again.ID, cmd.ID) { // the encoder may escape an id differently
			again.ID = cmd.ID
		}
		if err != nil || !reflect.DeepEqual(again, cmd) {
			t.Fatalf("%q: round trip %+v -> %s -> %+v (%v)", line, cmd, b, again, err)
		}
	})
}

// sameJSON reports whether two JSON values (or two absent ones) are equal.
func sameJSON(t *testing.T, a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		t.Fatalf("ids %q and %q are not JSON", a, b)
	}
	return reflect.DeepEqual(va, vb)
}

// Lines yields exactly the trimmed, non-empty newline-separated lines of a
// payload, in order, whatever the payload. Seed corpus: testdata/fuzz/FuzzLines.
func FuzzLines(f *testing.F) {
	for _, seed := range []string{"", "\n", "a", "a\nb", " a \r\n\n\tb\n", "\n\n\nx", "x\n\n\n", "\xff\n\x00"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		var want [][]byte
		for _, line := range bytes.Split(payload, []byte{'\n'}) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				want = append(want, line)
			}
		}
		var got [][]byte
		for line := range Lines(payload) {
			if len(line) == 0 || bytes.IndexByte(line, '\n') >= 0 || !bytes.Equal(line, bytes.TrimSpace(line)) {
				t.Fatalf("%q: line %q is empty, spans lines or is not trimmed", payload, line)
			}
			got = append(got, line)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: lines %q, want %q", payload, got, want)
		}
		for range Lines(payload) {
			break // a caller that stops early must not make it panic
		}
	})
}

package protocol_test

import (
	"encoding/json"
	"strings"
	"testing"

	"chat/internal/protocol"
)

// A message event is encoded once for all its recipients, as compact JSON
// with the text as it is (no HTML escaping) and no trailing newline, since
// frames separate events with '\n'.
func TestEncodeKeepsTheTextAsItIs(t *testing.T) {
	text := "<b>a & b</b>\nline two"
	got := protocol.MustEncode(protocol.Message{Type: "message", Room: "r", Epoch: "e", Seq: 1, ID: "i", From: "f", Text: text, TS: 2})
	want := `{"type":"message","room":"r","epoch":"e","seq":1,"id":"i","from":"f","text":"<b>a & b</b>\nline two","ts":2}`
	if string(got) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", got, want)
	}
	if strings.ContainsRune(string(got), '\n') {
		t.Fatal("an encoded event holds a raw newline")
	}
	var back protocol.Message
	if err := json.Unmarshal(got, &back); err != nil || back.Text != text {
		t.Fatalf("decoded %+v, %v", back, err)
	}
}

// BenchmarkEncodeMessage is the per-message encoding: once per message,
// whatever the number of recipients.
func BenchmarkEncodeMessage(b *testing.B) {
	m := protocol.Message{
		Type: "message", Room: "bench-0123456789", Epoch: "9f86d081884c7d65", Seq: 123456,
		ID: "0123456789ab-1e240", From: "bench-s0", Text: strings.Repeat("x", 100), TS: 1795450568881,
	}
	b.ReportAllocs()
	for b.Loop() {
		protocol.MustEncode(m)
	}
}

// An id must be a number a client can read back: one beyond float64's
// range is refused, and the error cannot answer it (found by FuzzDecodeCommand).
func TestDecodeCommandRefusesAnIDOutOfFloatRange(t *testing.T) {
	for _, line := range []string{`{"type":"rooms","id":1e700}`, `{"type":"rooms","id":-1e400}`} {
		cmd, err := protocol.DecodeCommand([]byte(line))
		if err == nil || err.Code != protocol.CodeBadRequest || cmd.ID != nil {
			t.Errorf("%s: id %s, err %v; want bad_request without id", line, cmd.ID, err)
		}
	}
	if cmd, err := protocol.DecodeCommand([]byte(`{"type":"rooms","id":1e300}`)); err != nil || string(cmd.ID) != "1e300" {
		t.Errorf("1e300: %s %v", cmd.ID, err)
	}
}

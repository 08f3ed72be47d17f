package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestPayloadRoundTrip(t *testing.T) {
	text := appendPayload(nil, 3, 17, 1700000000000000000, 100)
	if len(text) != 100 {
		t.Fatalf("len %d, want 100", len(text))
	}
	p, ok := parsePayload(text)
	if !ok || p != (payload{sender: 3, counter: 17, sentNs: 1700000000000000000}) {
		t.Fatalf("parsed %+v %v from %s", p, ok, text)
	}
	// A size below the header keeps the whole header.
	if p, ok := parsePayload(appendPayload(nil, 1, 2, 3, 1)); !ok || p.counter != 2 {
		t.Fatalf("short payload: %+v %v", p, ok)
	}
	for _, bad := range []string{"", "hello", "s1:2", "sx:1:2:", "s1:2:3"} {
		if _, ok := parsePayload([]byte(bad)); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestParseMessage(t *testing.T) {
	fast := `{"type":"message","room":"r","epoch":"e1","seq":42,"id":"m1","from":"a","text":"s0:1:5:xx","ts":1}`
	if seq, text, ok := parseMessage([]byte(fast)); !ok || seq != 42 || string(text) != "s0:1:5:xx" {
		t.Fatalf("fast path: %d %q %v", seq, text, ok)
	}
	// Escapes and a different key order go through encoding/json.
	slow := `{"text":"a\"b","seq":7,"type":"message"}`
	if seq, text, ok := parseMessage([]byte(slow)); !ok || seq != 7 || string(text) != `a"b` {
		t.Fatalf("slow path: %d %q %v", seq, text, ok)
	}
	if eventType([]byte(slow)) != "message" || eventType([]byte(fast)) != "message" {
		t.Fatal("eventType")
	}
}

func TestReceiverCountsLossDuplicatesAndOrder(t *testing.T) {
	cfg := &config{senders: 2, messages: 10}
	r := newReceiver(0, "u", nil, cfg)
	r.lastSeq = 5 // the join reply's seq
	now := time.Now().UnixNano()
	msg := func(seq int64, sender, counter int) []byte {
		text := appendPayload(nil, sender, counter, now-int64(time.Millisecond), 40)
		return fmt.Appendf(nil, `{"type":"message","room":"r","epoch":"e","seq":%d,"id":"x","from":"b","text":"%s","ts":1}`, seq, text)
	}
	r.handleLine(now, msg(6, 0, 1))
	r.handleLine(now, msg(7, 1, 1))
	r.handleLine(now, msg(9, 0, 3)) // seq 8 missing
	r.handleLine(now, msg(9, 0, 3)) // repeated
	r.handleLine(now, []byte(`{"type":"joined","room":"r","user":"c","client":"c1"}`))
	r.handleLine(now, msg(10, 0, 99)) // not from this run
	if got := r.delivered.Load(); got != 3 {
		t.Errorf("delivered %d, want 3", got)
	}
	if r.dups != 1 || r.foreign != 1 || r.seqGaps != 1 || r.outOfOrder != 2 {
		t.Errorf("dups %d foreign %d gaps %d out-of-order %d", r.dups, r.foreign, r.seqGaps, r.outOfOrder)
	}
	acked := newBitset(11)
	for k := 1; k <= 3; k++ {
		acked.set(k)
	}
	if loss := acked.andNotCount(r.got[0]); loss != 1 { // counter 2
		t.Errorf("loss %d, want 1", loss)
	}
	if q := r.hist.quantile(0.5); q < 970*time.Microsecond || q > 1030*time.Microsecond {
		t.Errorf("p50 %s, want about 1ms", q)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for v := int64(1); v <= 100000; v++ {
		h.record(v * 1000) // 1µs .. 100ms
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := q * 100000 * 1000
		got := float64(h.quantile(q))
		if math.Abs(got-want)/want > 0.04 {
			t.Errorf("q%.2f = %.0f, want %.0f within 4%%", q, got, want)
		}
	}
	if h.quantile(1) != 100*time.Millisecond {
		t.Errorf("max %s", h.quantile(1))
	}
	h.record(math.MaxInt64) // clamped, must not panic
	h.record(-5)
}

func TestNumber(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0:", 0, true},
		{"42:rest", 42, true},
		{"9223372036854775807:", math.MaxInt64, true},
		{"9223372036854775808:", 0, false},  // over int64
		{"99999999999999999999:", 0, false}, // 20 digits
		{":", 0, false},
		{"12", 0, false}, // no end
		{"1a:", 0, false},
		{"-1:", 0, false},
		{"12345678:", 12345678, true},
		{"123456789:", 123456789, true},
		{"1795450568881234567:x", 1795450568881234567, true},
		{"0000000000000000042:", 42, true},
		{"1234567a9:", 0, false},
		{"12345678", 0, false},
		{"1234567890123456789", 0, false},
		{"12345678/:", 0, false}, // '/' is just below '0'
		{"1234567:9:", 1234567, true},
	}
	for _, tc := range tests {
		n, rest, ok := number([]byte(tc.in), ':')
		if ok != tc.ok || n != tc.want {
			t.Errorf("number(%q) = %d, %v; want %d, %v", tc.in, n, ok, tc.want, tc.ok)
		}
		if ok && string(rest) != tc.in[strings.IndexByte(tc.in, ':')+1:] {
			t.Errorf("number(%q) left %q", tc.in, rest)
		}
	}
}

// BenchmarkReceiverHandleLine is the receivers' hot path: one message event
// as the server encodes it, parsed and recorded.
func BenchmarkReceiverHandleLine(b *testing.B) {
	const n = 4096 // lines, replayed; the receiver is reset between rounds
	cfg := &config{senders: 1, messages: n}
	r := newReceiver(0, "u", nil, cfg)
	now := time.Now().UnixNano()
	lines := make([][]byte, n)
	for i := range lines {
		text := appendPayload(nil, 0, i+1, now, 100)
		lines[i] = fmt.Appendf(nil, `{"type":"message","room":"bench-0123456789","epoch":"9f86d081884c7d65","seq":%d,"id":"m-%d","from":"bench-s0","text":"%s","ts":1}`, i+1, i+1, text)
	}
	b.ResetTimer()
	for i := range b.N {
		if i%n == 0 {
			r.lastSeq, r.got[0] = 0, nil
		}
		r.handleLine(now, lines[i%n])
	}
	if r.delivered.Load() != int64(b.N) || r.outOfOrder != 0 || r.dups != 0 {
		b.Fatalf("delivered %d of %d, out of order %d, duplicates %d", r.delivered.Load(), b.N, r.outOfOrder, r.dups)
	}
}

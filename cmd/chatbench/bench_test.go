package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"chat/internal/chattest"
	chatconfig "chat/internal/config"
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

func TestMembersURL(t *testing.T) {
	tests := []struct {
		ws, room, want string
	}{
		{"ws://127.0.0.1:8900/ws", "bench-1a2b", "http://127.0.0.1:8900/api/rooms/bench-1a2b/members?limit=1"},
		{"wss://chat.example.com/ws?x=1", "lobby", "https://chat.example.com/api/rooms/lobby/members?limit=1"},
		{"ws://[::1]:8881/some/prefix/ws", "r", "http://[::1]:8881/api/rooms/r/members?limit=1"},
	}
	for _, tc := range tests {
		got, err := membersURL(tc.ws, tc.room)
		if err != nil || got != tc.want {
			t.Errorf("membersURL(%q, %q) = %q, %v; want %q", tc.ws, tc.room, got, err, tc.want)
		}
	}
	for _, bad := range []string{"http://127.0.0.1:8900/ws", "ws:///ws", "://x"} {
		if got, err := membersURL(bad, "r"); err == nil {
			t.Errorf("membersURL(%q) = %q, want an error", bad, got)
		}
	}
}

func TestParseMembersCount(t *testing.T) {
	tests := []struct {
		body string
		want int
		ok   bool
	}{
		{`{"room":"r","members":[{"user":"bench-r0","connections":1}],"count":10000}`, 10000, true},
		{`{"room":"r","members":[],"count":0}`, 0, true},
		{`{"room":"r","members":[]}`, 0, false}, // a server without count: not "empty"
		{`{"code":"bad_request","message":"limit"}`, 0, false},
		{`{"count":-1}`, 0, false},
		{`{"count":"3"}`, 0, false},
		{`not json`, 0, false},
		{``, 0, false},
	}
	for _, tc := range tests {
		n, err := parseMembersCount([]byte(tc.body))
		if (err == nil) != tc.ok || n != tc.want {
			t.Errorf("parseMembersCount(%s) = %d, %v; want %d, ok %v", tc.body, n, err, tc.want, tc.ok)
		}
	}
}

// TestAwaitEmptyWaitsForEveryReplica: one replica sees the room empty at
// once, the other only at its third poll; the phase ends with the second.
func TestAwaitEmptyWaitsForEveryReplica(t *testing.T) {
	var slowPolls atomic.Int64
	replica := func(count func() int) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/api/rooms/bench-x/members" || r.URL.Query().Get("limit") != "1" {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, `{"room":"bench-x","members":[],"count":%d}`, count())
		}))
	}
	fast := replica(func() int { return 0 })
	defer fast.Close()
	slow := replica(func() int { return max(0, 2-int(slowPolls.Add(1)-1)) }) // 2, 1, 0
	defer slow.Close()
	ws := func(s *httptest.Server) string { return "ws" + strings.TrimPrefix(s.URL, "http") + "/ws" }

	b := &bench{cfg: &config{urls: []string{ws(fast), ws(slow), ws(fast)}, room: "bench-x"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lr := b.awaitEmpty(ctx, time.Now(), newServerProbe(0))
	if !lr.Empty || len(lr.Replicas) != 2 {
		t.Fatalf("empty %v, %d replicas (%+v), want empty, 2", lr.Empty, len(lr.Replicas), lr.Replicas)
	}
	f, s := lr.Replicas[0], lr.Replicas[1]
	if f.Polls != 1 || s.Polls != 3 || s.FirstCount != 2 || s.LastCount != 0 || f.Errors+s.Errors != 0 {
		t.Errorf("fast %+v, slow %+v; want 1 and 3 polls, the slow one from 2 to 0, no errors", f, s)
	}
	if s.EmptyMs < ms(2*leavePollInterval) || lr.EmptyMs != s.EmptyMs || f.EmptyMs > s.EmptyMs {
		t.Errorf("empty after %.1fms (fast %.1fms, slow %.1fms), want the slow one's, at least two intervals", lr.EmptyMs, f.EmptyMs, s.EmptyMs)
	}
}

// TestAwaitEmptyReportsARoomThatNeverEmpties: a reply without count is an
// error, not an empty room, and the phase ends with the run's context.
func TestAwaitEmptyReportsARoomThatNeverEmpties(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"room":"bench-x","members":[]}`)
	}))
	defer srv.Close()
	b := &bench{cfg: &config{urls: []string{"ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"}, room: "bench-x"}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	lr := b.awaitEmpty(ctx, time.Now(), newServerProbe(0))
	r := lr.Replicas[0]
	if lr.Empty || lr.EmptyMs != 0 || r.Empty || r.Polls != 0 || r.Errors < 2 || !strings.Contains(r.LastError, "without count") {
		t.Errorf("got %+v, replica %+v; want not empty, errors without count", lr, r)
	}
}

// TestRunAgainstServer runs chatbench against the real service (chattest),
// its receivers over each transport: every message reaches every receiver
// once, in seq order, and the room empties after the close. The server runs
// in this process, so -server-pid is this one's.
func TestRunAgainstServer(t *testing.T) {
	srv := chattest.Start(t, func(c *chatconfig.Config) {
		c.Chat.RateLimit, c.Chat.RateBurst = 100000, 100000 // the sender's closed loop
	})
	for _, transport := range []string{transportSSE, transportWS} {
		t.Run(transport, func(t *testing.T) {
			const receivers, messages = 20, 50
			cfg, err := parseFlags([]string{
				"-url", srv.WSURL, "-receiver-transport", transport,
				"-receivers", fmt.Sprint(receivers), "-senders", "1", "-messages", fmt.Sprint(messages),
				"-drain", "5s", "-duration", "30s", "-settle", "10ms",
				"-server-pid", fmt.Sprint(os.Getpid()),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), cfg.duration)
			defer cancel()
			rep, err := run(ctx, cfg)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			var out bytes.Buffer
			rep.writeText(&out)
			t.Logf("report:\n%s", out.String())

			if rep.Transport != transport || rep.Connected != receivers || rep.SendersConnected != 1 || len(rep.ConnectErrors) > 0 {
				t.Fatalf("transport %s, %d/%d receivers and %d senders connected, errors %v", rep.Transport, rep.Connected, receivers, rep.SendersConnected, rep.ConnectErrors)
			}
			if rep.Sent != messages || rep.Acked != messages {
				t.Errorf("sent %d, accepted %d, want %d", rep.Sent, rep.Acked, messages)
			}
			if want := int64(receivers * messages); rep.Received != want || rep.Expected != want || !rep.Drained {
				t.Errorf("received %d of %d expected (drained %v), want %d", rep.Received, rep.Expected, rep.Drained, want)
			}
			if rep.Loss != 0 || rep.Duplicates != 0 || rep.OutOfOrder != 0 || rep.SeqGaps != 0 {
				t.Errorf("loss %d, duplicates %d, out of order %d, seq gaps %d; want none", rep.Loss, rep.Duplicates, rep.OutOfOrder, rep.SeqGaps)
			}
			if rep.Foreign+rep.Resyncs+rep.ErrorEvents+rep.Malformed != 0 || rep.ReceiverDisconnects != 0 || len(rep.SenderDisconnects) > 0 {
				t.Errorf("foreign %d, resyncs %d, error events %d, malformed %d, disconnects %v %v; want none",
					rep.Foreign, rep.Resyncs, rep.ErrorEvents, rep.Malformed, rep.DisconnectReasons, rep.SenderDisconnects)
			}
			if rep.Latency.Count != uint64(receivers*messages) {
				t.Errorf("%d latencies, want one per delivery", rep.Latency.Count)
			}
			if rep.Leave == nil || !rep.Leave.Empty {
				t.Errorf("leave %+v: want the room empty after the close", rep.Leave)
			}
			if s := rep.Server; s == nil || s.Error != "" || s.CPUJoinSeconds == nil || s.CPULeaveSeconds == nil || s.RSSSettledMiB == nil {
				t.Errorf("server report %+v: want every phase sampled", s)
			}
		})
	}
}

func TestSSEURL(t *testing.T) {
	tests := []struct{ ws, want string }{
		{"ws://127.0.0.1:8900/ws", "http://127.0.0.1:8900/sse"},
		{"wss://chat.example.com/some/prefix/ws?x=1", "https://chat.example.com/sse"},
	}
	for _, tc := range tests {
		if got, err := sseURL(tc.ws); err != nil || got != tc.want {
			t.Errorf("sseURL(%q) = %q, %v; want %q", tc.ws, got, err, tc.want)
		}
	}
	if got, err := sseURL("http://127.0.0.1/ws"); err == nil {
		t.Errorf("sseURL(http://...) = %q, want an error", got)
	}
	if got := commandsURL("http://127.0.0.1:8900/sse", "n1-7"); got != "http://127.0.0.1:8900/api/sessions/n1-7/commands" {
		t.Errorf("commandsURL = %q", got)
	}
	if _, err := parseFlags([]string{"-receiver-transport", "sse", "-raw"}); err == nil {
		t.Error("-receiver-transport sse with -raw: want an error")
	}
	if _, err := parseFlags([]string{"-receiver-transport", "quic"}); err == nil {
		t.Error("-receiver-transport quic: want an error")
	}
}

// TestSSEStreamNext: data lines are events; comments, blank lines and other
// fields are skipped; CRLF, "data:" without its space and lines longer than
// the reader's buffer are read whole.
func TestSSEStreamNext(t *testing.T) {
	long := `{"type":"reply","id":"join","result":{"history":"` + strings.Repeat("h", 100) + `"}}`
	stream := ": ping\n\n" +
		"data: {\"type\":\"welcome\"}\n\n" +
		"event: x\nid: 7\nretry: 10\n" +
		"data: " + long + "\n" +
		"data:{\"type\":\"joined\"}\r\n\r\n" +
		"data: \n" + // empty: skipped
		"data: {\"type\":\"cut\"" // no newline: the stream ended mid-line
	s := newSSEReader(io.NopCloser(strings.NewReader(stream)), 16) // bufio's smallest buffer
	var got []string
	for {
		line, err := s.next()
		if err != nil {
			if err != io.EOF {
				t.Fatalf("err %v, want EOF", err)
			}
			break
		}
		got = append(got, string(line))
	}
	want := []string{`{"type":"welcome"}`, long, `{"type":"joined"}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestReceiverSSELoop: a receiver reading a stream counts its messages, and
// the stream's close event names the disconnect as a WebSocket close would.
func TestReceiverSSELoop(t *testing.T) {
	now := time.Now().UnixNano()
	msg := func(seq int64, counter int) string {
		text := appendPayload(nil, 0, counter, now, 40)
		return fmt.Sprintf(`{"type":"message","room":"r","epoch":"e","seq":%d,"id":"x","from":"b","text":"%s","ts":1}`, seq, text)
	}
	events := "data: " + msg(4, 1) + "\ndata: " + msg(5, 2) + "\n\n: ping\n\ndata: " + msg(6, 3) + "\n\n"
	tests := []struct {
		name, stream string
		closing      bool
		want         string
	}{
		{"close event", events + "data: {\"type\":\"close\",\"code\":4008,\"reason\":\"slow consumer\"}\n\n", false, "4008 slow consumer"},
		{"no close event", events, false, "stream ended without a close event"},
		{"closed by the bench", events, true, ""},
	}
	for _, tc := range tests {
		r := newReceiver(0, "u", nil, &config{senders: 1, messages: 10})
		r.lastSeq = 3
		r.sse = newSSEReader(io.NopCloser(strings.NewReader(tc.stream)), sseReadBuffer)
		var closing atomic.Bool
		closing.Store(tc.closing)
		r.readSSELoop(nil, &closing)
		if r.delivered.Load() != 3 || r.outOfOrder != 0 || r.dups != 0 || r.malformed != 0 {
			t.Errorf("%s: delivered %d, out of order %d, dups %d, malformed %d; want 3 in order", tc.name, r.delivered.Load(), r.outOfOrder, r.dups, r.malformed)
		}
		if r.disconnect != tc.want {
			t.Errorf("%s: disconnect %q, want %q", tc.name, r.disconnect, tc.want)
		}
		if r.hist.min < 0 || r.hist.n != 3 {
			t.Errorf("%s: latencies %d, min %d", tc.name, r.hist.n, r.hist.min)
		}
	}
}

// BenchmarkReceiverSSELine is an SSE receiver's hot path: a stream of
// message events (in SSE events of 20 data lines) read line by line from
// the stream's reader, parsed and recorded. Compare with
// BenchmarkReceiverHandleLine, which is the same without the reading.
func BenchmarkReceiverSSELine(b *testing.B) {
	const n = 4096
	cfg := &config{senders: 1, messages: n}
	r := newReceiver(0, "u", nil, cfg)
	now := time.Now().UnixNano()
	var stream []byte
	for i := range n {
		text := appendPayload(nil, 0, i+1, now, 100)
		stream = fmt.Appendf(stream, `data: {"type":"message","room":"bench-0123456789","epoch":"9f86d081884c7d65","seq":%d,"id":"m-%d","from":"bench-s0","text":"%s","ts":1}`+"\n", i+1, i+1, text)
		if i%20 == 19 {
			stream = append(stream, '\n')
		}
	}
	src := bytes.NewReader(stream)
	r.sse = newSSEReader(io.NopCloser(src), sseReadBuffer)
	b.SetBytes(int64(len(stream) / n))
	b.ResetTimer()
	for i := range b.N {
		if i%n == 0 {
			r.lastSeq, r.got[0] = 0, nil
			src.Reset(stream)
			r.sse.br.Reset(&r.sse.clock)
		}
		line, err := r.sse.next()
		if err != nil {
			b.Fatal(err)
		}
		r.handleLine(r.sse.clock.now, line)
	}
	if r.delivered.Load() != int64(b.N) || r.outOfOrder != 0 || r.dups != 0 {
		b.Fatalf("delivered %d of %d, out of order %d, duplicates %d", r.delivered.Load(), b.N, r.outOfOrder, r.dups)
	}
}

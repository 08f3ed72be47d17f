package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/protocol"

	"github.com/redis/go-redis/v9"
)

// Bounds of the Redis fault tests. brokerTimeout mirrors chat.brokerTimeout:
// a command that needs Redis answers within it. The margins are generous,
// for a loaded 2-core machine; no bound is a lower one.
const (
	brokerTimeout = 5 * time.Second
	faultReply    = brokerTimeout + 10*time.Second // a reply while Redis is unreachable
	faultRecover  = 60 * time.Second               // retries until Redis is back for the service
	faultLatency  = brokerTimeout + 2*time.Second  // more than a command may wait
	faultHold     = 6 * time.Second                // the least time a fault lasts
)

// redisFault is one way Redis becomes unreachable for the replicas, and how
// it comes back.
type redisFault struct {
	name   string
	inject func(t *testing.T, r *faultRig)
	heal   func(t *testing.T, r *faultRig)
	// landed: the sends answered unavailable reach Redis anyway once it
	// heals (the broker's answer was lost, not its command), so their
	// retries must return the seqs they were published with.
	landed bool
}

// TestRedisFaultAnswersUnavailableAndLosesNothing runs two replicas whose
// Redis (a private redis-server) sits behind a TCP fault proxy. During each
// fault a send answers unavailable within the broker timeout and every
// connection stays open; after it, retries with the same key publish once,
// and both the members that stayed connected and a client recovering with
// since see every acknowledged message exactly once, in seq order.
func TestRedisFaultAnswersUnavailableAndLosesNothing(t *testing.T) {
	faults := []redisFault{
		{
			// The send's script reaches Redis only after the broker gave up:
			// an unknown outcome that the retry must resolve without a copy.
			name:   "latency above the broker timeout",
			inject: func(t *testing.T, r *faultRig) { r.proxy.SetLatency(faultLatency) },
			heal:   func(t *testing.T, r *faultRig) { r.proxy.Restore() },
			landed: true,
		},
		{
			name:   "cut link",
			inject: func(t *testing.T, r *faultRig) { r.proxy.Cut() },
			heal:   func(t *testing.T, r *faultRig) { r.proxy.Restore() },
		},
		{
			// Sockets stay open and the kernel buffers the commands; Redis
			// runs them when it resumes, after the broker gave up.
			name:   "redis paused with SIGSTOP",
			inject: func(t *testing.T, r *faultRig) { r.redis.Pause(t) },
			heal:   func(t *testing.T, r *faultRig) { r.redis.Resume(t) },
			landed: true,
		},
	}
	for _, f := range faults {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) { testRedisFault(t, f) })
	}
}

// faultRig is two replicas sharing a private Redis through a fault proxy.
type faultRig struct {
	redis *chattest.RedisServer
	proxy *chattest.FaultProxy
	nodes []*chattest.Server
}

func startFaultRig(t *testing.T) *faultRig {
	t.Helper()
	r := &faultRig{redis: chattest.StartRedisServer(t)}
	r.proxy = chattest.StartFaultProxy(t, r.redis.Addr)
	prefix := chattest.UniquePrefix()
	for range 2 {
		r.nodes = append(r.nodes, chattest.Start(t, fast, chattest.WithRedis(r.proxy.Addr(), prefix)))
	}
	return r
}

func testRedisFault(t *testing.T, f redisFault) {
	r := startFaultRig(t)
	const room = "r"
	// alice sends through replica 0, carol through replica 1; bob only
	// reads, on replica 1. All three stay connected throughout.
	alice := dialWire(t, r.nodes[0], "alice")
	carol := dialWire(t, r.nodes[1], "carol")
	bob := dialWire(t, r.nodes[1], "bob")
	var epoch string
	for _, w := range []*wire{alice, carol, bob} {
		epoch = w.join(room, nil).Epoch
	}
	acked := map[int64]string{} // seq -> text (the text is the send's key)
	ack := func(w *wire, key string) {
		t.Helper()
		seq := w.sendUntilAcked(room, key)
		if prev, dup := acked[seq]; dup {
			t.Fatalf("%s: key %s acknowledged with seq %d, already the seq of %s", f.name, key, seq, prev)
		}
		acked[seq] = key
	}
	ack(alice, "a1")
	ack(carol, "c1")
	before := int64(len(acked)) // the position a recovering client saw last
	bob.messages(room, before)

	f.inject(t, r)
	injected := time.Now()
	// Both replicas' senders at once: each reply is bounded by the broker
	// timeout, not by the other's.
	aliceSend := alice.sendAsync(room, "a2")
	carolSend := carol.sendAsync(room, "c2")
	for _, s := range []pendingSend{aliceSend, carolSend} {
		rep, took := s.wait(faultReply)
		if rep.Error == nil || rep.Error.Code != protocol.CodeUnavailable {
			t.Fatalf("%s: %s's send of %s answered %s / %+v after %v, want error unavailable", f.name, s.w.name, s.key, rep.Result, rep.Error, took)
		}
		t.Logf("%s: %s's send answered unavailable after %v", f.name, s.w.name, took.Round(time.Millisecond))
	}
	// A retry while the fault lasts is just as safe, and just as bounded.
	rep, took := alice.sendAsync(room, "a2").wait(faultReply)
	if rep.Error == nil || rep.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("%s: alice's retry of a2 during the fault answered %s / %+v after %v, want error unavailable", f.name, rep.Result, rep.Error, took)
	}
	t.Logf("%s: alice's retry during the fault answered unavailable after %v", f.name, took.Round(time.Millisecond))
	if status := getStatus(t, r.nodes[0].URL+"/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("%s: /readyz during the fault: %d, want 503", f.name, status)
	}
	// Hold the fault past the subscriber's health check (3 s) and the
	// probe interval (5 s), so that their reconnects fail too.
	time.Sleep(time.Until(injected.Add(faultHold)))
	for _, w := range []*wire{alice, carol, bob} {
		w.open()
	}
	f.heal(t, r)
	t.Logf("%s: healed %v after the fault began", f.name, time.Since(injected).Round(time.Millisecond))

	// The outcome of a2 and c2 is unknown: the retries with their keys
	// publish them at most once. Where they were published anyway, the
	// retries return those seqs.
	healed := time.Now()
	published := map[string]int64{}
	if f.landed {
		for _, m := range bob.messages(room, before+2) {
			if m.Seq > before {
				published[m.Text] = m.Seq
			}
		}
		t.Logf("%s: the unacknowledged sends were published %v after healing: %v", f.name, time.Since(healed).Round(time.Millisecond), published)
	}
	for _, retry := range []struct {
		w   *wire
		key string
	}{{alice, "a2"}, {carol, "c2"}} {
		ack(retry.w, retry.key)
		if seq, ok := published[retry.key]; ok && acked[seq] != retry.key {
			t.Fatalf("%s: the retry of %s was acknowledged with another seq than %d, which it was published with: %v", f.name, retry.key, seq, acked)
		}
	}
	t.Logf("%s: retries acknowledged %v after healing", f.name, time.Since(healed).Round(time.Millisecond))
	ack(alice, "a3")
	ack(carol, "c3")
	last := int64(len(acked))
	for seq := int64(1); seq <= last; seq++ {
		if _, ok := acked[seq]; !ok {
			t.Fatalf("%s: acknowledged seqs %v have a gap at %d: something published that no one acknowledged", f.name, acked, seq)
		}
	}

	// Every member that stayed connected, on both replicas, sees each
	// message once and in order, and is never told to resync.
	for _, w := range []*wire{alice, carol, bob} {
		w.messages(room, last)
		w.quiet(room, 2*time.Second)
		checkMessages(t, f.name+": "+w.name+" (stayed connected)", w.messagesOf(room), 1, acked)
		w.open()
	}

	// A client that last saw seq `before` recovers exactly what it missed.
	dave := dialWire(t, r.nodes[0], "dave")
	j := dave.join(room, map[string]any{"epoch": epoch, "seq": before})
	if !j.Recovered || j.Epoch != epoch || j.Seq != last {
		t.Fatalf("%s: recovering join: recovered %v, epoch %s (want %s), seq %d (want %d)", f.name, j.Recovered, j.Epoch, epoch, j.Seq, last)
	}
	checkMessages(t, f.name+": dave (recovered)", j.History, before+1, acked)
	// Each publish allocates its seq with one HINCRBY (counted in Redis's
	// commandstats even when a script runs it); a retry that found its key
	// allocates none.
	if n := r.redisCalls(t, "hincrby"); n != last {
		t.Fatalf("%s: Redis allocated %d seqs for %d acknowledged messages", f.name, n, last)
	}
}

// redisCalls is how many times the private Redis ran cmd, asked directly
// rather than through the proxy.
func (r *faultRig) redisCalls(t *testing.T, cmd string) int64 {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: r.redis.Addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
	defer cancel()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, err := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			if err != nil {
				t.Fatalf("commandstats %q: %v", line, err)
			}
			return n
		}
	}
	return 0
}

// checkMessages asserts that msgs are the seqs from..len(acked), each once,
// in order, each with the text acknowledged for its seq, no text twice.
func checkMessages(t *testing.T, who string, msgs []protocol.Message, from int64, acked map[int64]string) {
	t.Helper()
	want := int64(len(acked)) - from + 1
	texts := map[string]int64{}
	for i, m := range msgs {
		if m.Seq != from+int64(i) {
			t.Fatalf("%s: message %d has seq %d, want %d; all: %v", who, i, m.Seq, from+int64(i), seqTexts(msgs))
		}
		if m.Text != acked[m.Seq] {
			t.Fatalf("%s: seq %d is %q, acknowledged as %q; all: %v", who, m.Seq, m.Text, acked[m.Seq], seqTexts(msgs))
		}
		if prev, dup := texts[m.Text]; dup {
			t.Fatalf("%s: %q published twice, seq %d and %d", who, m.Text, prev, m.Seq)
		}
		texts[m.Text] = m.Seq
	}
	if int64(len(msgs)) != want {
		t.Fatalf("%s: %d messages, want %d; all: %v", who, len(msgs), want, seqTexts(msgs))
	}
}

func seqTexts(msgs []protocol.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, fmt.Sprintf("%d:%s", m.Seq, m.Text))
	}
	return out
}

// wire drives a chattest.Client through its raw frames (Client.Frames),
// with deadlines of its own: chattest.Timeout equals the broker timeout, so
// it is too short to wait for a reply that may take all of it. A wire keeps
// every event it read, in order; it is used from the test goroutine only.
type wire struct {
	t      *testing.T
	name   string
	c      *chattest.Client
	events []wireEvent
	nextID int
}

// wireEvent holds the fields of every event the fault tests read.
type wireEvent struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *protocol.Error `json:"error"`
	protocol.Message
}

func dialWire(t *testing.T, s *chattest.Server, name string) *wire {
	t.Helper()
	return &wire{t: t, name: name, c: s.DialName(t, name)}
}

// pull reads one more frame; false when deadline passed first.
func (w *wire) pull(deadline time.Time) bool {
	w.t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case frame := <-w.c.Frames:
		w.parse(frame)
		return true
	case <-timer.C:
		return false
	case <-w.c.Done():
		// The reader queues every frame before it ends.
		select {
		case frame := <-w.c.Frames:
			w.parse(frame)
			return true
		default:
		}
		w.t.Fatalf("%s: the server closed the connection", w.name)
		return false
	}
}

func (w *wire) parse(frame []byte) {
	w.t.Helper()
	for _, line := range bytes.Split(frame, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		var e wireEvent
		if err := json.Unmarshal(line, &e); err != nil {
			w.t.Fatalf("%s: bad event %q: %v", w.name, line, err)
		}
		e.Message.Type = e.Type
		w.events = append(w.events, e)
	}
}

// open asserts that the connection is still open.
func (w *wire) open() {
	w.t.Helper()
	select {
	case <-w.c.Done():
		w.t.Fatalf("%s: the connection was closed", w.name)
	default:
	}
}

// pendingSend is a send command on its way.
type pendingSend struct {
	w     *wire
	key   string
	id    json.RawMessage
	from  int // events before the command was written: its reply comes later
	start time.Time
}

// command writes a command with a fresh id, without waiting.
func (w *wire) command(typ string, fields map[string]any) pendingSend {
	w.t.Helper()
	w.nextID++
	id := fmt.Sprintf("w%d", w.nextID)
	cmd := map[string]any{"type": typ, "id": id}
	for k, v := range fields {
		cmd[k] = v
	}
	p := pendingSend{w: w, id: json.RawMessage(`"` + id + `"`), from: len(w.events), start: time.Now()}
	w.c.Send(cmd)
	return p
}

// sendAsync writes a send of text key with idempotency key key.
func (w *wire) sendAsync(room, key string) pendingSend {
	w.t.Helper()
	p := w.command("send", map[string]any{"room": room, "text": key, "key": key})
	p.key = key
	return p
}

// wait returns the command's reply and how long it took, failing the test
// after within.
func (p pendingSend) wait(within time.Duration) (wireEvent, time.Duration) {
	w := p.w
	w.t.Helper()
	deadline := p.start.Add(within)
	for i := p.from; ; i++ {
		for i >= len(w.events) {
			if !w.pull(deadline) {
				w.t.Fatalf("%s: no reply to %s within %v", w.name, p.id, within)
			}
		}
		if e := w.events[i]; e.Type == "reply" && bytes.Equal(e.ID, p.id) {
			return e, time.Since(p.start)
		}
	}
}

// sendUntilAcked sends text key with idempotency key key, again after each
// unavailable, until it is acknowledged; it returns the seq.
func (w *wire) sendUntilAcked(room, key string) int64 {
	w.t.Helper()
	deadline := time.Now().Add(faultRecover)
	for {
		rep, took := w.sendAsync(room, key).wait(faultReply)
		if rep.Error == nil {
			var res struct{ Seq int64 }
			if err := json.Unmarshal(rep.Result, &res); err != nil || res.Seq == 0 {
				w.t.Fatalf("%s: send result %s: %v", w.name, rep.Result, err)
			}
			return res.Seq
		}
		if rep.Error.Code != protocol.CodeUnavailable || time.Now().After(deadline) {
			w.t.Fatalf("%s: send %s: %+v after %v (retrying for %v)", w.name, key, rep.Error, took, faultRecover)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// join joins room (with since, when not nil) and returns the result.
func (w *wire) join(room string, since map[string]any) chattest.JoinResult {
	w.t.Helper()
	fields := map[string]any{"room": room}
	if since != nil {
		fields["since"] = since
	}
	rep, _ := w.command("join", fields).wait(faultReply)
	if rep.Error != nil {
		w.t.Fatalf("%s: join %s: %+v", w.name, room, rep.Error)
	}
	var j chattest.JoinResult
	if err := json.Unmarshal(rep.Result, &j); err != nil {
		w.t.Fatalf("%s: join result %s: %v", w.name, rep.Result, err)
	}
	return j
}

// messagesOf is every message event of room read so far, in order of
// arrival.
func (w *wire) messagesOf(room string) []protocol.Message {
	var out []protocol.Message
	for _, e := range w.events {
		if e.Type == "message" && e.Room == room {
			out = append(out, e.Message)
		}
	}
	return out
}

// messages waits until a message of room with seq upTo or later arrived and
// returns them all; it fails at a resync, which a fault that history covers
// must never cause.
func (w *wire) messages(room string, upTo int64) []protocol.Message {
	w.t.Helper()
	deadline := time.Now().Add(faultRecover)
	for i := 0; ; i++ {
		for i >= len(w.events) {
			if !w.pull(deadline) {
				w.t.Fatalf("%s: seq %d of %s not delivered within %v; got %v", w.name, upTo, room, faultRecover, seqTexts(w.messagesOf(room)))
			}
		}
		e := w.events[i]
		if e.Type == "resync" {
			w.t.Fatalf("%s: resync %+v; got %v", w.name, e.Message, seqTexts(w.messagesOf(room)))
		}
		if e.Type == "message" && e.Room == room && e.Seq >= upTo {
			return w.messagesOf(room)
		}
	}
}

// quiet reads for d more, so that a late duplicate or resync is seen.
func (w *wire) quiet(room string, d time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for w.pull(deadline) {
	}
	for _, e := range w.events {
		if e.Type == "resync" {
			w.t.Fatalf("%s: resync %+v; got %v", w.name, e.Message, seqTexts(w.messagesOf(room)))
		}
	}
}

// TestRedisFaultProxyForwardsDelaysCutsAndCloses checks the fault proxy on
// its own, against an echo server: latency delays chunks and releases them
// when lowered, a cut closes live connections and drops new ones until
// Restore, and Close ends every goroutine of the proxy.
func TestRedisFaultProxyForwardsDelaysCutsAndCloses(t *testing.T) {
	echo := startEcho(t)
	p := chattest.StartFaultProxy(t, echo)
	roundTrip := func(c net.Conn, text string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(faultReply))
		if _, err := c.Write([]byte(text)); err != nil {
			t.Fatalf("write %q: %v", text, err)
		}
		buf := make([]byte, len(text))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != text {
			t.Fatalf("echo of %q: %q, %v", text, buf, err)
		}
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", p.Addr(), faultReply)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ended := func(c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(faultReply))
		if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still forwards: read %d, %v", n, err)
		}
	}

	c := dial()
	roundTrip(c, "plain")
	p.SetLatency(time.Second)
	start := time.Now()
	roundTrip(c, "slow")
	if took := time.Since(start); took < 2*time.Second { // a second each way; never less
		t.Fatalf("the round trip took %v with a second of latency each way", took)
	}
	// A chunk waiting out a long latency is released when it is lowered.
	p.SetLatency(time.Hour)
	_, _ = c.Write([]byte("held"))
	p.SetLatency(0)
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("held chunk: %q, %v", buf, err)
	}

	// A cut ends live connections, chunks in flight and all, and new ones.
	p.SetLatency(time.Hour)
	_, _ = c.Write([]byte("lost"))
	p.Cut()
	ended(c)
	ended(dial())
	p.Restore()
	roundTrip(dial(), "again")

	// Close ends the proxy's goroutines, even one waiting out a latency.
	held := dial()
	roundTrip(held, "before close")
	p.SetLatency(time.Hour)
	_, _ = held.Write([]byte("never"))
	p.Close()
	ended(held)
	stacks := make([]byte, 1<<22)
	stacks = stacks[:runtime.Stack(stacks, true)]
	if bytes.Contains(stacks, []byte("internal/chattest/faultproxy.go")) {
		t.Fatalf("goroutines of the proxy outlive Close:\n%s", stacks)
	}
}

// startEcho runs a TCP server that echoes what it reads, until the test ends.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"
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
	alice := r.nodes[0].DialName(t, "alice")
	carol := r.nodes[1].DialName(t, "carol")
	bob := r.nodes[1].DialName(t, "bob")
	members := []*chattest.Client{alice, carol, bob}
	var epoch string
	for _, c := range members {
		epoch = c.Join(room).Epoch
	}
	acked := map[int64]string{} // seq -> text (the text is the send's key)
	ack := func(c *chattest.Client, key string) {
		t.Helper()
		seq := sendUntilAcked(t, c, room, key)
		if prev, dup := acked[seq]; dup {
			t.Fatalf("%s: key %s acknowledged with seq %d, already the seq of %s", f.name, key, seq, prev)
		}
		acked[seq] = key
	}
	got := map[*chattest.Client][]protocol.Message{} // each member's messages of room, in order of arrival
	// receive waits until a message with seq upTo or later arrived and
	// returns every message so far. Nothing waits for a resync, so one read
	// meanwhile stays in the backlog, where Quiet finds it: a fault that
	// history covers must never cause one.
	receive := func(c *chattest.Client, upTo int64) []protocol.Message {
		t.Helper()
		defer func() {
			if t.Failed() {
				t.Logf("%s: %s got %v", f.name, user(c), seqTexts(got[c]))
			}
		}()
		deadline := time.Now().Add(faultRecover)
		for !slices.ContainsFunc(got[c], func(m protocol.Message) bool { return m.Seq >= upTo }) {
			e := c.WaitForWithin("message", func(e chattest.Event) bool { return e.Str("room") == room }, time.Until(deadline))
			var m protocol.Message
			if err := e.Decode(&m); err != nil {
				t.Fatalf("%s: message %s: %v", user(c), e, err)
			}
			got[c] = append(got[c], m)
		}
		c.Quiet("resync", 0)
		return got[c]
	}
	// unavailable asserts that the send id, written at sent, answers
	// unavailable within faultReply of it.
	unavailable := func(c *chattest.Client, what string, id int, sent time.Time) {
		t.Helper()
		rep := c.ReplyWithin(id, time.Until(sent.Add(faultReply)))
		took := time.Since(sent)
		if rep.Err == nil || rep.Err.Code != protocol.CodeUnavailable {
			t.Fatalf("%s: %s answered %s / %+v after %v, want error unavailable", f.name, what, rep.Result, rep.Err, took)
		}
		t.Logf("%s: %s answered unavailable after %v", f.name, what, took.Round(time.Millisecond))
	}
	ack(alice, "a1")
	ack(carol, "c1")
	before := int64(len(acked)) // the position a recovering client saw last
	receive(bob, before)

	f.inject(t, r)
	injected := time.Now()
	// Both replicas' senders at once: each reply is bounded by the broker
	// timeout, not by the other's.
	sent := time.Now()
	aliceSend := alice.Start("send", keyedSend(room, "a2"))
	carolSend := carol.Start("send", keyedSend(room, "c2"))
	unavailable(alice, "alice's send of a2", aliceSend, sent)
	unavailable(carol, "carol's send of c2", carolSend, sent)
	// A retry while the fault lasts is just as safe, and just as bounded.
	sent = time.Now()
	unavailable(alice, "alice's retry of a2 during the fault", alice.Start("send", keyedSend(room, "a2")), sent)
	if status := getStatus(t, r.nodes[0].URL+"/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("%s: /readyz during the fault: %d, want 503", f.name, status)
	}
	// Hold the fault past the subscriber's health check (3 s) and the
	// probe interval (5 s), so that their reconnects fail too.
	time.Sleep(time.Until(injected.Add(faultHold)))
	for _, c := range members {
		stillOpen(t, c)
	}
	f.heal(t, r)
	t.Logf("%s: healed %v after the fault began", f.name, time.Since(injected).Round(time.Millisecond))

	// The outcome of a2 and c2 is unknown: the retries with their keys
	// publish them at most once. Where they were published anyway, the
	// retries return those seqs.
	healed := time.Now()
	published := map[string]int64{}
	if f.landed {
		for _, m := range receive(bob, before+2) {
			if m.Seq > before {
				published[m.Text] = m.Seq
			}
		}
		t.Logf("%s: the unacknowledged sends were published %v after healing: %v", f.name, time.Since(healed).Round(time.Millisecond), published)
	}
	for _, retry := range []struct {
		c   *chattest.Client
		key string
	}{{alice, "a2"}, {carol, "c2"}} {
		ack(retry.c, retry.key)
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
	for _, c := range members {
		receive(c, last)
		c.Quiet("message", 2*time.Second) // a late duplicate
		c.Quiet("resync", 0)              // one read during the quiet stays in the backlog
		checkMessages(t, f.name+": "+user(c)+" (stayed connected)", got[c], 1, acked)
		stillOpen(t, c)
	}

	// A client that last saw seq `before` recovers exactly what it missed.
	dave := r.nodes[0].DialName(t, "dave")
	var j chattest.JoinResult
	dave.DoWithin("join", map[string]any{"room": room, "since": map[string]any{"epoch": epoch, "seq": before}}, faultReply).Decode(t, &j)
	// The room's head is the last acknowledged seq: no retry published
	// again (it would have taken a seq of its own).
	if !j.Recovered || j.Epoch != epoch || j.Seq != last {
		t.Fatalf("%s: recovering join: recovered %v, epoch %s (want %s), seq %d (want %d)", f.name, j.Recovered, j.Epoch, epoch, j.Seq, last)
	}
	checkMessages(t, f.name+": dave (recovered)", j.History, before+1, acked)
}

// keyedSend is a send of text key with idempotency key key.
func keyedSend(room, key string) map[string]any {
	return map[string]any{"room": room, "text": key, "key": key}
}

// sendUntilAcked sends text key with idempotency key key, again after each
// unavailable, until it is acknowledged; it returns the seq.
func sendUntilAcked(t *testing.T, c *chattest.Client, room, key string) int64 {
	t.Helper()
	deadline := time.Now().Add(faultRecover)
	for {
		start := time.Now()
		rep := c.DoWithin("send", keyedSend(room, key), faultReply)
		if rep.Err == nil {
			var res struct{ Seq int64 }
			rep.Decode(t, &res)
			if res.Seq == 0 {
				t.Fatalf("%s: send result %s has no seq", user(c), rep.Result)
			}
			return res.Seq
		}
		if rep.Err.Code != protocol.CodeUnavailable || time.Now().After(deadline) {
			t.Fatalf("%s: send %s: %+v after %v (retrying for %v)", user(c), key, rep.Err, time.Since(start), faultRecover)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// stillOpen asserts that the server has not closed c.
func stillOpen(t *testing.T, c *chattest.Client) {
	t.Helper()
	select {
	case <-c.Done():
		t.Fatalf("%s: the connection was closed", user(c))
	default:
	}
}

func user(c *chattest.Client) string { return c.Welcome.Str("user") }

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

// TestNodeStartsWhileRedisIsDownAndFollowsWhenItIsBack: a replica started
// while its Redis cannot be reached starts anyway, answers /readyz 503,
// and once Redis is reachable serves connections and reaches one of them
// through its node's own topic (a kick of one connection), which it could
// not subscribe at start.
func TestNodeStartsWhileRedisIsDownAndFollowsWhenItIsBack(t *testing.T) {
	proxy := chattest.StartFaultProxy(t, chattest.RedisAddr(t))
	proxy.Cut()
	s := chattest.Start(t, chattest.WithRedis(proxy.Addr(), chattest.UniquePrefix()), func(c *config.Config) { c.Chat.ApiKey = "k" })
	if code := getStatus(t, s.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with Redis down = %d, want 503", code)
	}
	proxy.Restore()
	deadline := time.Now().Add(faultRecover)
	for getStatus(t, s.URL+"/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 %v after Redis came back", faultRecover)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var alice *chattest.Client
	for alice == nil {
		c, resp, err := chattest.DialURL(t, s.WSURL+"?name=alice", nil)
		if err == nil {
			alice = c
			break
		}
		if resp == nil || time.Now().After(deadline) {
			t.Fatalf("dial after Redis came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	alice.Join("back")
	alice.Say("back", "hello")
	// DELETE /api/clients/:client goes through the node's topic.
	for {
		req, _ := http.NewRequest(http.MethodDelete, s.URL+"/api/clients/"+alice.Welcome.Str("client"), nil)
		req.Header.Set("X-API-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DELETE /api/clients/... = %d", resp.StatusCode)
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case <-alice.Done():
	case <-time.After(chattest.Timeout):
		t.Fatal("the kicked connection is still open: the node's topic was never subscribed")
	}
	if code := alice.CloseCode(); code != 4003 {
		t.Fatalf("close code %d, want 4003", code)
	}
}

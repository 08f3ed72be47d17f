package hub_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// timeout bounds every wait of a test.
const timeout = 5 * time.Second

const defaultQueue = 1 << 20 // Chat.MaxQueueBytes default

// newHub starts a Hub and stops it when the test ends.
func newHub(t testing.TB) *hub.Hub {
	t.Helper()
	h := hub.New(16)
	go h.Run()
	t.Cleanup(h.Stop)
	return h
}

// probe is a client as its write pump sees it: what it drained so far and
// the close request, if any. Only the test goroutine uses it.
type probe struct {
	*hub.Client
	events [][]byte
	closed *hub.CloseRequest
}

func newProbe(id, user string, maxQueue int) *probe {
	return &probe{Client: hub.NewClient(id, user, maxQueue)}
}

// register makes a client with the default queue limit and registers it.
func register(t testing.TB, h *hub.Hub, id, user string) *probe {
	t.Helper()
	return registerQueue(t, h, id, user, defaultQueue)
}

func registerQueue(t testing.TB, h *hub.Hub, id, user string, maxQueue int) *probe {
	t.Helper()
	p := newProbe(id, user, maxQueue)
	if err := h.Register(p.Client); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return p
}

func (p *probe) drain() {
	batch, req := p.Drain()
	p.events = append(p.events, batch...) // copies the headers; Drain reuses its slice
	if req != nil {
		p.closed = req
	}
}

// next waits for n events and consumes them.
func (p *probe) next(t testing.TB, n int) []event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for p.drain(); len(p.events) < n; p.drain() {
		select {
		case <-p.Wake():
		case <-deadline.C:
			t.Fatalf("client %s: timed out waiting for %d events, got %d: %s", p.ID, n, len(p.events), show(p.events))
		}
	}
	got := decodeAll(t, p.events[:n])
	p.events = p.events[n:]
	return got
}

// waitClosed waits for a close request.
func (p *probe) waitClosed(t testing.TB) hub.CloseRequest {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for p.drain(); p.closed == nil; p.drain() {
		select {
		case <-p.Wake():
		case <-deadline.C:
			t.Fatalf("client %s: timed out waiting for a close request", p.ID)
		}
	}
	return *p.closed
}

// rest drains without waiting and returns every unconsumed event. Call it
// only after a barrier made sure the Hub is done with the client.
func (p *probe) rest(t testing.TB) []event {
	t.Helper()
	p.drain()
	got := decodeAll(t, p.events)
	p.events = nil
	return got
}

// event is the part of an encoded event the tests look at.
type event struct {
	Type  string `json:"type"`
	ID    any    `json:"id"`
	Room  string `json:"room"`
	Epoch string `json:"epoch"`
	Seq   int64  `json:"seq"`
	Text  string `json:"text"`
}

func (e event) String() string {
	if e.Type == "reply" {
		return fmt.Sprintf("reply(%v)", e.ID)
	}
	return fmt.Sprintf("%s(%s %s #%d %s)", e.Type, e.Room, e.Epoch, e.Seq, e.Text)
}

func decodeAll(t testing.TB, raw [][]byte) []event {
	t.Helper()
	events := make([]event, len(raw))
	for i, b := range raw {
		if err := json.Unmarshal(b, &events[i]); err != nil {
			t.Fatalf("event %q: %v", b, err)
		}
	}
	return events
}

func show(raw [][]byte) string {
	s := ""
	for _, b := range raw {
		s += string(b) + " "
	}
	return s
}

func describe(events []event) string { return fmt.Sprint(events) }

// message is a room message as the broker delivers it.
func message(room, epoch string, seq int64) broker.Delivery {
	m := protocol.Message{Type: "message", Room: room, Epoch: epoch, Seq: seq, ID: fmt.Sprintf("%s-%s-%d", room, epoch, seq), From: "alice", Text: "hi", TS: 1}
	return broker.Delivery{Kind: broker.KindMessage, Topic: broker.Room(room), Message: m, Payload: protocol.MustEncode(m)}
}

func deliver(h *hub.Hub, room, epoch string, seqs ...int64) {
	for _, s := range seqs {
		h.Deliver(message(room, epoch, s))
	}
}

func reply(id string) []byte { return []byte(`{"type":"reply","id":"` + id + `"}`) }

// join adds c to room as the connection does: its reply covers up to seq.
func join(t testing.TB, h *hub.Hub, c *probe, room, epoch string, seq int64) hub.JoinResult {
	t.Helper()
	r, err := h.Join(hub.JoinRequest{Client: c.Client, Room: room, Epoch: epoch, Seq: seq, Reply: reply("join-" + room)})
	if err != nil {
		t.Fatalf("join %s: %v", room, err)
	}
	return r
}

// member joins and checks that the join took effect.
func member(t testing.TB, h *hub.Hub, c *probe, room, epoch string, seq int64) {
	t.Helper()
	if r := join(t, h, c, room, epoch, seq); r.Stale {
		t.Fatalf("join %s at seq %d was stale (hub at %d)", room, seq, r.LastSeq)
	}
}

// barrier returns once the Hub handled every delivery handed to it before
// and handed their events to the clients' queues: deliveries are handled
// in order, so a marker reaching a witness means everything before it was
// handled, and a call through the loop after it means the flush ended.
type barrier struct {
	h       *hub.Hub
	witness *probe
	seq     int64
}

func newBarrier(t testing.TB, h *hub.Hub) *barrier {
	t.Helper()
	b := &barrier{h: h, witness: register(t, h, "barrier", "barrier")}
	member(t, h, b.witness, "barrier-room", "e", 0)
	b.witness.next(t, 1) // the join reply
	return b
}

func (b *barrier) wait(t testing.TB) {
	t.Helper()
	b.seq++
	deliver(b.h, "barrier-room", "e", b.seq)
	// The witness may get other events first (a broadcast reaches it too).
	for {
		e := b.witness.next(t, 1)[0]
		if e.Type == "message" && e.Room == "barrier-room" && e.Seq == b.seq {
			break
		}
	}
	// The witness's message may be handed over early in a flush that is
	// still handing events to other clients; a call through the loop
	// returns only after that flush ended.
	if err := b.h.Leave(b.witness.Client, "barrier-none", nil); err != nil {
		t.Fatal(err)
	}
}

// types lists the events as short strings: "reply", "message#3", "resync".
func types(events []event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		switch e.Type {
		case "message":
			out[i] = fmt.Sprintf("message#%d", e.Seq)
		default:
			out[i] = e.Type
		}
	}
	return out
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v", what, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

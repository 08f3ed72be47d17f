package hub_test

import (
	"bytes"
	"reflect"
	"testing"

	"chat/internal/hub"
	"chat/internal/protocol"
)

func TestDrainReturnsQueuedEventsInOrder(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	for _, e := range []string{"a", "b", "c"} {
		if !c.Enqueue([]byte(e)) {
			t.Fatalf("enqueue %q refused", e)
		}
	}
	batch, req := c.Drain()
	if got := string(bytes.Join(batch, nil)); got != "abc" || req != nil {
		t.Fatalf("drain = %q, %v; want \"abc\", no close", got, req)
	}
	if batch, _ := c.Drain(); len(batch) != 0 {
		t.Fatalf("second drain = %q, want nothing", batch)
	}
	c.Enqueue([]byte("d"))
	if batch, _ := c.Drain(); len(batch) != 1 || string(batch[0]) != "d" {
		t.Fatalf("drain after more = %q, want [d]", batch)
	}
}

func TestDrainingFreesQueueBytes(t *testing.T) {
	c := hub.NewClient("c1", "alice", 10)
	for i := 0; i < 100; i++ { // 100 × 6 bytes, never more than 6 queued
		if !c.Enqueue([]byte("abcdef")) {
			t.Fatalf("enqueue %d refused though the queue was drained", i)
		}
		c.Drain()
	}
}

func TestEnqueueWakesTheWriter(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	c.Enqueue([]byte("a"))
	c.Enqueue([]byte("b"))
	select {
	case <-c.Wake():
	default:
		t.Fatal("no wake after enqueue")
	}
	select {
	case <-c.Wake():
		t.Fatal("two wakes for one pending batch; wake has room for one")
	default:
	}
}

// The limit counts the bytes behind the oldest queued event, which is the
// next to be written.
func TestQueueLimitCountsBytesNotEvents(t *testing.T) {
	c := hub.NewClient("c1", "alice", 1000)
	for i := 0; i <= 100; i++ { // the oldest, then 100 × 10 bytes = exactly the limit
		if !c.Enqueue([]byte("0123456789")) {
			t.Fatalf("event %d refused, limit 1000 bytes", i)
		}
	}
	if c.Closing() {
		t.Fatal("closed at exactly the limit")
	}
	if c.Enqueue([]byte("x")) {
		t.Fatal("event over the byte limit was queued")
	}
}

func TestSlowConsumerIsClosedWith4008(t *testing.T) {
	c := hub.NewClient("c1", "alice", 10)
	c.Enqueue([]byte("123456"))
	c.Enqueue([]byte("789012")) // 6 bytes behind the oldest
	if c.Enqueue([]byte("345678")) {
		t.Fatal("event over the limit was queued")
	}
	batch, req := c.Drain()
	if req == nil || req.Code != protocol.CloseSlowConsumer {
		t.Fatalf("close request %+v, want code %d", req, protocol.CloseSlowConsumer)
	}
	if len(batch) != 0 {
		t.Fatalf("a slow consumer's queue is dropped, drained %q", batch)
	}
	if c.Enqueue([]byte("x")) {
		t.Fatal("enqueue after the slow-consumer close succeeded")
	}
}

func TestOneEventIsAdmittedToAnEmptyQueue(t *testing.T) {
	c := hub.NewClient("c1", "alice", 10)
	big := bytes.Repeat([]byte("x"), 100)
	if !c.Enqueue(big) {
		t.Fatal("an event larger than the limit was refused by an empty queue")
	}
	if c.Closing() {
		t.Fatal("a large event alone closed the client")
	}
	if batch, _ := c.Drain(); len(batch) != 1 || !bytes.Equal(batch[0], big) {
		t.Fatalf("drained %d events, want the large one", len(batch))
	}
}

// A large event at the head of the queue (a recovery reply) does not make
// the small events behind it trip the limit; a large one behind it does.
func TestOldestEventDoesNotCountAgainstTheLimit(t *testing.T) {
	c := hub.NewClient("c1", "alice", 10)
	big := bytes.Repeat([]byte("x"), 100)
	c.Enqueue(big)
	for i := 0; i < 10; i++ {
		if !c.Enqueue([]byte("y")) {
			t.Fatalf("small event %d behind a large one refused", i)
		}
	}
	if c.Enqueue(big) {
		t.Fatal("a large event behind the oldest was queued past the limit")
	}
	if !c.Closing() {
		t.Fatal("queue over the limit did not close the client")
	}
}

func TestCloseWithFlushKeepsTheQueue(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	c.Enqueue([]byte("a"))
	req := hub.CloseRequest{Code: 1001, Text: "going away", Flush: true}
	c.Close(req)
	if c.Enqueue([]byte("b")) {
		t.Fatal("enqueue after close succeeded")
	}
	batch, got := c.Drain()
	if len(batch) != 1 || string(batch[0]) != "a" || got == nil || *got != req {
		t.Fatalf("drain = %q, %+v; want [a] and %+v", batch, got, req)
	}
}

func TestCloseWithoutFlushDropsTheQueue(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	c.Enqueue([]byte("a"))
	c.Close(hub.CloseRequest{Code: 4003, Text: "kicked"})
	batch, got := c.Drain()
	if len(batch) != 0 || got == nil || got.Code != 4003 {
		t.Fatalf("drain = %q, %+v; want nothing and code 4003", batch, got)
	}
}

func TestFirstCloseRequestWins(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	first := hub.CloseRequest{Code: 4003, Text: "kicked"}
	c.Close(first)
	c.Close(hub.CloseRequest{Code: 1001, Text: "going away", Flush: true})
	select {
	case <-c.Wake():
	default:
		t.Fatal("close did not wake the writer")
	}
	if _, got := c.Drain(); got == nil || !reflect.DeepEqual(*got, first) {
		t.Fatalf("close request %+v, want the first %+v", got, first)
	}
}

func TestDrainedBatchStaysIntactUntilTheNextDrain(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	c.Enqueue([]byte("a"))
	c.Enqueue([]byte("b"))
	batch, _ := c.Drain()
	c.Enqueue([]byte("c")) // must not write into the batch the writer holds
	if got := string(bytes.Join(batch, nil)); got != "ab" {
		t.Fatalf("batch became %q after another enqueue, want \"ab\"", got)
	}
	if next, _ := c.Drain(); len(next) != 1 || string(next[0]) != "c" {
		t.Fatalf("next drain = %q, want [c]", next)
	}
}

// Control frames are taken ahead of the events, keep the writer going, are
// bounded, and are refused once the client closes.
func TestControlFramesAreTakenFirstAndBounded(t *testing.T) {
	c := hub.NewClient("c1", "alice", 100)
	c.Enqueue([]byte("event"))
	for i := range 10 {
		if !c.Control([]byte{byte(i)}) {
			t.Fatalf("control %d refused on an open client", i)
		}
	}
	b := c.Take()
	if len(b.Controls) == 0 || len(b.Controls) > 4 || b.Controls[0][0] != 0 {
		t.Fatalf("controls %v, want the first few, at most 4", b.Controls)
	}
	if len(b.Events) != 1 || string(b.Events[0]) != "event" || b.Close != nil {
		t.Fatalf("events %q, close %v; want [event], none", b.Events, b.Close)
	}
	c.Control([]byte("ping"))
	if c.Idle() {
		t.Fatal("Idle with a control frame queued")
	}
	if b := c.Take(); len(b.Controls) != 1 || !c.Idle() {
		t.Fatalf("controls %q, then Idle should end the writer", b.Controls)
	}
	c.Close(hub.CloseRequest{Code: 1001})
	if c.Control([]byte("ping")) {
		t.Fatal("Control accepted on a closing client")
	}
}

package hub

import (
	"fmt"
	"testing"

	"chat/internal/broker"
	"chat/internal/protocol"
)

// The record of rooms without members must not grow with every room the
// node ever saw.
func TestIdleRoomRecordIsBounded(t *testing.T) {
	h := New(0) // unbuffered: each Deliver returns once the loop took it
	go h.Run()
	const rooms = 5 * idleGeneration
	for i := 0; i < rooms; i++ {
		m := protocol.Message{Type: "message", Room: fmt.Sprintf("room-%d", i), Epoch: "e", Seq: 1}
		h.Deliver(broker.Delivery{Kind: broker.KindMessage, Topic: broker.Room(m.Room), Message: m, Payload: protocol.MustEncode(m)})
	}
	c := NewClient("c1", "alice", 1<<20)
	if err := h.Register(c); err != nil { // the loop finished the last delivery first
		t.Fatal(err)
	}
	h.Stop() // the loop's state is the test's from here
	if n := len(h.idle) + len(h.idleOld); n > 2*idleGeneration {
		t.Fatalf("%d memberless rooms recorded after %d, want at most %d", n, rooms, 2*idleGeneration)
	}
	if _, ok := h.idlePosition(fmt.Sprintf("room-%d", rooms-1)); !ok {
		t.Fatal("the newest memberless room is not recorded")
	}
}

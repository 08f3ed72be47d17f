package redisbroker

import (
	"context"
	"testing"
	"time"

	"chat/internal/broker"

	"github.com/alicebob/miniredis/v2"
)

// TestSilentSubscriptionIsRebuilt unsubscribes the node's pub/sub connection
// behind the broker's back: the connection stays healthy (pings work) but
// receives nothing. The probe must notice and rebuild the subscription, and
// the messages published meanwhile must be filled from history.
func TestSilentSubscriptionIsRebuilt(t *testing.T) {
	m := miniredis.RunT(t)
	var got collector
	b, err := New(Options{Options: broker.Options{HistorySize: 100}, Addr: m.Addr(), Prefix: "probe", Node: "n1",
		ProbeInterval: 100 * time.Millisecond}, got.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Subscribe(ctx, broker.Room("r")); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	ps, channels := b.pubsub, b.channelList()
	b.mu.Unlock()
	if err := ps.Unsubscribe(ctx, channels...); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 3; i++ { // published while the node hears nothing
		if _, err := b.Publish(ctx, broker.Publication{Room: "r", From: "a", Text: "x", ID: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := b.Publish(ctx, broker.Publication{Room: "r", From: "a", Text: "after", ID: "m"}); err != nil {
			t.Fatal(err)
		}
		got.mu.Lock()
		n := len(got.ds)
		got.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the silent subscription was never rebuilt")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	got.mu.Lock()
	defer got.mu.Unlock()
	for i, d := range got.ds {
		if d.Kind != broker.KindMessage || d.Message.Seq != int64(i+1) {
			t.Fatalf("delivery %d is %v seq %d: want every seq from 1 in order", i, d.Kind, d.Message.Seq)
		}
	}
}

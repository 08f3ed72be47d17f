package redisbroker

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// missedPublish runs the publish script with the PUBLISH going to a channel
// nobody listens to: the message is in history, but the node never hears of
// it, as when its subscription dropped for a moment.
func missedPublish(t *testing.T, b *Broker, room, text string) {
	t.Helper()
	tail := `"id":"x","from":"ghost","text":` + jsonString(text) + `,"ts":1`
	err := publishScript.Run(context.Background(), b.rdb,
		[]string{b.metaKey(room), b.histKey(room), "", ""},
		jsonString(room), tail, broker.NewEpoch(), b.opts.HistorySize,
		b.opts.HistoryTTL.Milliseconds(), b.opts.KeyTTL.Milliseconds(), b.prefix+"ch:nobody", 0, room).Err()
	if err != nil {
		t.Fatal(err)
	}
}

type collector struct {
	mu sync.Mutex
	ds []broker.Delivery
}

func (c *collector) handle(d broker.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ds = append(c.ds, d)
}

func (c *collector) waitFor(t *testing.T, n int) []broker.Delivery {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		ds := append([]broker.Delivery(nil), c.ds...)
		c.mu.Unlock()
		if len(ds) >= n {
			return ds
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d deliveries, want %d", len(ds), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newTestBroker(t *testing.T, historySize int, h broker.Handler) *Broker {
	m := miniredis.RunT(t)
	b, err := New(Options{Options: broker.Options{HistorySize: historySize}, Addr: m.Addr(), Prefix: "gap", Node: "n1"}, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.Subscribe(context.Background(), broker.Room("r")); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSeqJumpIsFilledFromHistory(t *testing.T) {
	var got collector
	b := newTestBroker(t, 10, got.handle)
	missedPublish(t, b, "r", "missed 1")
	missedPublish(t, b, "r", "missed 2")
	if _, err := b.Publish(context.Background(), broker.Publication{Room: "r", From: "a", Text: "heard", ID: "m3"}); err != nil {
		t.Fatal(err)
	}
	ds := got.waitFor(t, 3)
	for i, want := range []string{"missed 1", "missed 2", "heard"} {
		if ds[i].Kind != broker.KindMessage || ds[i].Message.Seq != int64(i+1) || ds[i].Message.Text != want {
			t.Fatalf("delivery %d: %+v, want seq %d %q", i, ds[i], i+1, want)
		}
		var m protocol.Message
		if err := decode(ds[i].Payload, &m); err != nil || m.Seq != int64(i+1) {
			t.Fatalf("payload %d: %s", i, ds[i].Payload)
		}
	}
}

func TestGapBeyondHistoryBecomesResync(t *testing.T) {
	var got collector
	b := newTestBroker(t, 2, got.handle)
	for i := 0; i < 5; i++ {
		missedPublish(t, b, "r", "lost")
	}
	if _, err := b.Publish(context.Background(), broker.Publication{Room: "r", From: "a", Text: "heard", ID: "m6"}); err != nil {
		t.Fatal(err)
	}
	ds := got.waitFor(t, 2)
	if ds[0].Kind != broker.KindResync || ds[0].Message.Seq != 5 || ds[1].Message.Seq != 6 {
		t.Fatalf("got %+v then %+v, want resync at 5 then seq 6", ds[0], ds[1])
	}
}

func decode(b []byte, v any) error { return json.Unmarshal(b, v) }

// Redis lost the room while the subscription was down, and the room's new
// sequence published a message the node never heard: no live message may
// follow, so the check after the resubscribe delivers the new sequence from
// history (the Hub resyncs members at its first message).
func TestResubscribeAfterTheRoomRestartedDeliversTheNewSequence(t *testing.T) {
	var got collector
	m := miniredis.RunT(t)
	b, err := New(Options{Options: broker.Options{HistorySize: 10}, Addr: m.Addr(), Prefix: "gap", Node: "n1"}, got.handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.Subscribe(context.Background(), broker.Room("r")); err != nil {
		t.Fatal(err)
	}
	first, err := b.Publish(context.Background(), broker.Publication{Room: "r", From: "a", Text: "heard", ID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	got.waitFor(t, 1)
	m.FlushAll()
	missedPublish(t, b, "r", "missed")
	b.catchUp("r", 0, "") // what each subscribe confirmation runs
	ds := got.waitFor(t, 2)
	d := ds[1]
	if d.Kind != broker.KindMessage || d.Message.Text != "missed" || d.Message.Seq != 1 || d.Message.Epoch == first.Epoch {
		t.Fatalf("after the resubscribe: %+v, want the new sequence's seq 1", d)
	}
	b.catchUp("r", 0, "") // a second check delivers nothing again
	time.Sleep(50 * time.Millisecond)
	if n := len(got.waitFor(t, 2)); n != 2 {
		t.Fatalf("%d deliveries after a second check, want 2", n)
	}
}

// A message published while a gap fill read history can reach the node
// twice: from history, then live. It is handed over once.
func TestMessageFilledFromHistoryIsNotDeliveredAgainLive(t *testing.T) {
	var got collector
	b := newTestBroker(t, 10, got.handle)
	ctx := context.Background()
	missedPublish(t, b, "r", "one")
	b.catchUp("r", 0, "") // a resubscribe's check fills seq 1 from history
	got.waitFor(t, 1)
	h, err := b.History(ctx, "r", broker.HistoryQuery{})
	if err != nil || len(h.Messages) != 1 {
		t.Fatalf("history %+v, %v", h, err)
	}
	b.dispatch(&redis.Message{Channel: b.channel(broker.Room("r")), Payload: "M" + string(protocol.MustEncode(h.Messages[0]))})
	if _, err := b.Publish(ctx, broker.Publication{Room: "r", From: "a", Text: "two", ID: "m2"}); err != nil {
		t.Fatal(err)
	}
	ds := got.waitFor(t, 2)
	time.Sleep(50 * time.Millisecond)
	got.mu.Lock()
	defer got.mu.Unlock()
	var seqs []int64
	for _, d := range got.ds {
		seqs = append(seqs, d.Message.Seq)
	}
	if len(seqs) != 2 || ds[0].Message.Seq != 1 || ds[1].Message.Seq != 2 {
		t.Fatalf("delivered seqs %v, want [1 2]", seqs)
	}
}

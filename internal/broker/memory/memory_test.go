package memory

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/brokertest"
	"chat/internal/protocol"
)

func TestConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, opts broker.Options) brokertest.Cluster {
		c := &cluster{clock: &fakeClock{now: time.Now()}}
		c.backend = NewBackend(opts)
		c.backend.now = c.clock.Now
		return c
	})
}

// cluster runs the suite's nodes on one Backend whose clock the suite
// advances, so that expiry tests neither sleep nor race the real clock.
type cluster struct {
	backend *Backend
	clock   *fakeClock
}

func (c *cluster) Node(_ *testing.T, h broker.Handler) broker.Broker { return c.backend.Node(h) }

func (c *cluster) Advance(_ *testing.T, d time.Duration) { c.clock.Advance(d) }

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testRoom is a room name of the same length as every other the history
// bound tests use, so that rooms with the same messages cost the same.
func testRoom(i int) string { return fmt.Sprintf("room%03d", i) }

// roomCost is the estimate of a room named like testRoom holding count
// messages of text from alice with ids like "m1".
func roomCost(count int, text string) int64 {
	name, epoch := testRoom(0), broker.NewEpoch()
	m := protocol.Message{Room: name, Epoch: epoch, ID: "m1", From: "alice", Text: text}
	return roomBytes(name, epoch) + int64(count)*messageBytes(m)
}

func publishTo(t *testing.T, n broker.Broker, room, text string) protocol.Message {
	t.Helper()
	m, err := n.Publish(context.Background(), broker.Publication{Room: room, From: "alice", Text: text, ID: "m1"})
	if err != nil {
		t.Fatalf("publish to %s: %v", room, err)
	}
	return m
}

func historyOf(t *testing.T, n broker.Broker, room string) broker.History {
	t.Helper()
	h, err := n.History(context.Background(), room, broker.HistoryQuery{})
	if err != nil {
		t.Fatalf("history of %s: %v", room, err)
	}
	return h
}

// held reports whether the backend still holds room, and its epoch, without
// using it (a History call would count as a use).
func held(b *Backend, room string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rooms[room]
	if r == nil {
		return "", false
	}
	return r.epoch, true
}

// checkAccounting recounts every room's estimate from scratch and walks the
// list by last use, and fails unless both agree with what the backend keeps
// up to date on each publish. It returns the total.
func checkAccounting(t *testing.T, b *Backend) int64 {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var total int64
	for name, r := range b.rooms {
		want := roomBytes(name, r.epoch)
		for _, m := range r.history {
			want += messageBytes(m)
		}
		if r.bytes != want {
			t.Fatalf("room %s counts %d bytes, a recount says %d", name, r.bytes, want)
		}
		total += want
	}
	if b.historyBytes != total {
		t.Fatalf("the backend counts %d bytes, its rooms %d", b.historyBytes, total)
	}
	listed := 0
	for r, older := b.oldest, (*room)(nil); r != nil; r, older = r.newer, r {
		if r.older != older || b.rooms[r.name] != r {
			t.Fatalf("list by last use is broken at %s", r.name)
		}
		listed++
	}
	if listed != len(b.rooms) {
		t.Fatalf("%d rooms listed by last use, %d held", listed, len(b.rooms))
	}
	return total
}

func TestHistoryBytesStayUnderTheBound(t *testing.T) {
	text := strings.Repeat("x", 100)
	for _, tc := range []struct {
		name        string
		historySize int
		bound       int64
		rooms       int
		perRoom     int
	}{
		{"many rooms of few messages", 10, 20 * roomCost(3, text), 500, 3},
		{"rooms trimmed at twice HistorySize", 5, 8 * roomCost(9, text), 60, 40},
		{"one room over the bound by itself", 200, roomCost(7, text), 3, 50},
		{"a bound under one room", 10, roomCost(0, text) / 2, 20, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBackend(broker.Options{HistorySize: tc.historySize, HistoryMaxBytes: tc.bound})
			n := b.Node(func(broker.Delivery) {})
			defer n.Close()
			floor := roomCost(1, text) // the most one room keeps however small the bound
			for i := 0; i < tc.rooms; i++ {
				for j := 0; j < tc.perRoom; j++ {
					publishTo(t, n, testRoom(i), text)
					if total := checkAccounting(t, b); total > max(tc.bound, floor) {
						t.Fatalf("room %d message %d: %d bytes held, the bound is %d", i, j, total, tc.bound)
					}
				}
			}
		})
	}
}

func TestHistoryBytesFollowTrimsAndExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	b := NewBackend(broker.Options{HistorySize: 4, HistoryTTL: time.Minute})
	b.now = clock.Now
	n := b.Node(func(broker.Delivery) {})
	defer n.Close()
	for i := 0; i < 3; i++ {
		for j := 0; j < 11; j++ { // trimmed at 8, held up to 7
			publishTo(t, n, testRoom(i), "hello")
			checkAccounting(t, b)
		}
	}
	if got, want := checkAccounting(t, b), 3*roomCost(7, "hello"); got != want {
		t.Fatalf("3 rooms of 7 held messages count %d bytes, want %d", got, want)
	}
	clock.Advance(time.Minute + time.Second)
	publishTo(t, n, testRoom(9), "hello") // any use drops what expired
	if got, want := checkAccounting(t, b), roomCost(1, "hello"); got != want {
		t.Fatalf("after HistoryTTL %d bytes held, want %d (only the room just used)", got, want)
	}
}

func TestLeastRecentlyUsedRoomIsEvictedFirst(t *testing.T) {
	text := strings.Repeat("x", 100)
	for _, tc := range []struct {
		name    string
		use     func(t *testing.T, n broker.Broker, room string) // what makes room000 recently used
		evicted string
	}{
		{"nothing used since", func(*testing.T, broker.Broker, string) {}, testRoom(0)},
		{"history read", func(t *testing.T, n broker.Broker, room string) { historyOf(t, n, room) }, testRoom(1)},
		{"publish", func(t *testing.T, n broker.Broker, room string) { publishTo(t, n, room, text) }, testRoom(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Room for three rooms of two messages and one more message,
			// not for a fourth room.
			b := NewBackend(broker.Options{HistorySize: 10, HistoryMaxBytes: 2*roomCost(2, text) + roomCost(3, text)})
			n := b.Node(func(broker.Delivery) {})
			defer n.Close()
			for i := 0; i < 3; i++ {
				publishTo(t, n, testRoom(i), text)
				publishTo(t, n, testRoom(i), text)
			}
			tc.use(t, n, testRoom(0))
			publishTo(t, n, testRoom(3), text)
			publishTo(t, n, testRoom(3), text)
			for i := 0; i < 4; i++ {
				name := testRoom(i)
				if _, ok := held(b, name); ok == (name == tc.evicted) {
					t.Errorf("%s held: %v; want only %s evicted", name, ok, tc.evicted)
				}
			}
			checkAccounting(t, b)
		})
	}
}

// evictOld publishes to "old", then to other rooms until "old" is evicted,
// and returns its last message.
func evictOld(t *testing.T, b *Backend, n broker.Broker, key string) protocol.Message {
	t.Helper()
	last, err := n.Publish(context.Background(), broker.Publication{Room: "old", From: "alice", Text: "first", ID: "m1", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, ok := held(b, "old"); !ok {
			return last
		}
		if i == 1000 {
			t.Fatal("old is never evicted")
		}
		publishTo(t, n, testRoom(i), strings.Repeat("x", 100))
	}
}

func TestEvictedRoomStartsANewEpochAtSeqOne(t *testing.T) {
	b := NewBackend(broker.Options{HistoryMaxBytes: 5 * roomCost(1, strings.Repeat("x", 100))})
	n := b.Node(func(broker.Delivery) {})
	defer n.Close()
	old := evictOld(t, b, n, "")
	h := historyOf(t, n, "old")
	if h.Epoch == "" || h.Epoch == old.Epoch || h.Seq != 0 || len(h.Messages) != 0 {
		t.Fatalf("history of an evicted room = (%q, seq %d, %d messages), want a new epoch (not %q), seq 0, none",
			h.Epoch, h.Seq, len(h.Messages), old.Epoch)
	}
	if m := publishTo(t, n, "old", "again"); m.Epoch != h.Epoch || m.Seq != 1 {
		t.Fatalf("first message after eviction (%q, %d), want (%q, 1)", m.Epoch, m.Seq, h.Epoch)
	}
}

func TestEvictedRoomForgetsItsKeys(t *testing.T) {
	b := NewBackend(broker.Options{HistoryMaxBytes: 5 * roomCost(1, strings.Repeat("x", 100))})
	n := b.Node(func(broker.Delivery) {})
	defer n.Close()
	old := evictOld(t, b, n, "k1")
	m, err := n.Publish(context.Background(), broker.Publication{Room: "old", From: "alice", Text: "first", ID: "m2", Key: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Epoch == old.Epoch || m.Seq != 1 || m.ID != "m2" {
		t.Fatalf("retry after eviction = (%q, %d, %s), want seq 1 of a new epoch, published anew (not %q)", m.Epoch, m.Seq, m.ID, old.Epoch)
	}
}

func TestRoomAloneOverTheBoundLosesItsOldestMessages(t *testing.T) {
	text := strings.Repeat("x", 100)
	for _, tc := range []struct {
		name  string
		bound int64
		kept  int
	}{
		{"bound holds three messages", roomCost(3, text), 3},
		{"bound under one message", roomCost(0, text) + 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBackend(broker.Options{HistorySize: 10, HistoryMaxBytes: tc.bound})
			n := b.Node(func(broker.Delivery) {})
			defer n.Close()
			var first protocol.Message
			for i := 1; i <= 25; i++ {
				m := publishTo(t, n, testRoom(0), text)
				if i == 1 {
					first = m
				}
			}
			h := historyOf(t, n, testRoom(0))
			if h.Epoch != first.Epoch || h.Seq != 25 || len(h.Messages) != tc.kept || h.Messages[len(h.Messages)-1].Seq != 25 {
				t.Fatalf("history = (%q, seq %d, %d messages), want (%q, 25) with the last %d", h.Epoch, h.Seq, len(h.Messages), first.Epoch, tc.kept)
			}
			for i, m := range h.Messages {
				if want := int64(25 - tc.kept + 1 + i); m.Seq != want {
					t.Fatalf("message %d has seq %d, want %d", i, m.Seq, want)
				}
			}
			checkAccounting(t, b)
		})
	}
}

func TestZeroBoundKeepsEveryRoom(t *testing.T) {
	for _, bound := range []int64{0, -1} {
		t.Run(fmt.Sprint(bound), func(t *testing.T) {
			b := NewBackend(broker.Options{HistorySize: 5, HistoryMaxBytes: bound})
			n := b.Node(func(broker.Delivery) {})
			defer n.Close()
			epochs := make(map[string]string)
			for i := 0; i < 300; i++ {
				for j := 0; j < 3; j++ {
					epochs[testRoom(i)] = publishTo(t, n, testRoom(i), strings.Repeat("x", 1000)).Epoch
				}
			}
			for room, epoch := range epochs {
				if got, ok := held(b, room); !ok || got != epoch {
					t.Fatalf("%s lost its history without a bound", room)
				}
			}
			if got, want := checkAccounting(t, b), 300*roomCost(3, strings.Repeat("x", 1000)); got != want {
				t.Fatalf("%d bytes counted, want %d", got, want)
			}
		})
	}
}

func TestUserConnectionsFollowConnectDisconnectAndClose(t *testing.T) {
	b := NewBackend(broker.Options{})
	a, c := b.Node(func(broker.Delivery) {}), b.Node(func(broker.Delivery) {})
	defer c.Close()
	ctx := context.Background()
	conn := func(client, user string) broker.Conn { return broker.Conn{Client: client, User: user} }
	steps := []struct {
		name string
		do   func() error
		want map[string]int
	}{
		{"connect on two nodes", func() error {
			for _, err := range []error{
				a.Connect(ctx, conn("c1", "alice")), a.Connect(ctx, conn("c2", "alice")),
				c.Connect(ctx, conn("c3", "alice")), c.Connect(ctx, conn("c4", "bob")),
			} {
				if err != nil {
					return err
				}
			}
			return nil
		}, map[string]int{"alice": 3, "bob": 1}},
		{"connect the same client again", func() error { return a.Connect(ctx, conn("c1", "alice")) }, map[string]int{"alice": 3, "bob": 1}},
		{"a client id reused by another user", func() error { return c.Connect(ctx, conn("c2", "bob")) }, map[string]int{"alice": 2, "bob": 2}},
		{"disconnect", func() error { return c.Disconnect(ctx, conn("c3", "alice")) }, map[string]int{"alice": 1, "bob": 2}},
		{"disconnect twice", func() error { return c.Disconnect(ctx, conn("c3", "alice")) }, map[string]int{"alice": 1, "bob": 2}},
		{"disconnect an unknown client", func() error { return a.Disconnect(ctx, conn("c9", "carol")) }, map[string]int{"alice": 1, "bob": 2}},
		{"close a node", a.Close, map[string]int{"bob": 1}},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		for _, user := range []string{"alice", "bob", "carol"} {
			got, err := c.UserConnections(ctx, user)
			if err != nil {
				t.Fatal(err)
			}
			walked := 0
			b.mu.Lock()
			for _, conn := range b.conns {
				if conn.User == user {
					walked++
				}
			}
			b.mu.Unlock()
			if got != step.want[user] || got != walked {
				t.Fatalf("after %s: %s has %d connections (%d by a walk), want %d", step.name, user, got, walked, step.want[user])
			}
		}
	}
}

// BenchmarkPublishBoundedManyRooms publishes round robin over more rooms
// than the bound holds, so that most publishes evict: the cost per publish
// must not grow with the number of rooms.
func BenchmarkPublishBoundedManyRooms(b *testing.B) {
	text := strings.Repeat("x", 100)
	for _, rooms := range []int{1000, 100000} {
		b.Run(fmt.Sprint(rooms), func(b *testing.B) {
			backend := NewBackend(broker.Options{HistorySize: 10, HistoryMaxBytes: int64(rooms/2) * roomCost(2, text)})
			n := backend.Node(func(broker.Delivery) {})
			defer n.Close()
			names := make([]string, rooms)
			for i := range names {
				names[i] = fmt.Sprintf("room%06d", i)
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := n.Publish(ctx, broker.Publication{Room: names[i%rooms], From: "alice", Text: text, ID: "m"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package redisbroker

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"

	"github.com/alicebob/miniredis/v2"
)

// presenceBroker is a node on addr (a fresh miniredis when addr is "") with
// its own key prefix.
func presenceBroker(t testing.TB, addr string, ttl time.Duration) *Broker {
	t.Helper()
	prefix := "presence-" + broker.NewEpoch()
	if addr == "" {
		addr = miniredis.RunT(t).Addr()
	} else {
		t.Cleanup(func() { flushPrefix(t, addr, prefix) })
	}
	b, err := New(Options{Options: broker.Options{PresenceTTL: ttl}, Addr: addr, Prefix: prefix, Node: "n1"}, func(broker.Delivery) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// TestRefreshRecountsPresenceRedisLost empties Redis, scripts included, as
// a restart without persistence does: the node's next refresh must rebuild
// the room's index, connection counts and all, through the join script.
func TestRefreshRecountsPresenceRedisLost(t *testing.T) {
	m := miniredis.RunT(t)
	b, err := New(Options{Options: broker.Options{PresenceTTL: 600 * time.Millisecond}, Addr: m.Addr(), Prefix: "lost", Node: "n1"}, func(broker.Delivery) {})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for _, c := range []broker.Conn{{Client: "c1", User: "alice"}, {Client: "c2", User: "alice"}, {Client: "c3", User: "bob"}} {
		if _, err := b.Join(ctx, "lobby", c); err != nil {
			t.Fatal(err)
		}
	}
	m.FlushAll()
	if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	want := []protocol.Member{{User: "alice", Connections: 2}, {User: "bob", Connections: 1}}
	deadline := time.Now().Add(2 * time.Second)
	for {
		page, err := b.Members(ctx, "lobby", broker.MembersQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if page.Count == 2 && reflect.DeepEqual(page.Members, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members after Redis lost them: %+v, want %+v again", page, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p, err := b.Join(ctx, "lobby", broker.Conn{Client: "c4", User: "alice"}); err != nil || p != (broker.RoomPresence{Count: 2}) {
		t.Fatalf("alice's third connection after the rebuild: %+v, %v; want count 2, unchanged", p, err)
	}
}

// TestTenThousandConnectionsJoinOneRoom is the large room of SPEC §15: its
// joins cost O(log N) each, so they take seconds, not minutes (a join that
// read the whole room took minutes). On a real Redis (CHAT_TEST_REDIS) that
// is under a second; miniredis sorts a whole set for each range it reads,
// so there the room is smaller and the test checks only the counts.
func TestTenThousandConnectionsJoinOneRoom(t *testing.T) {
	addr := os.Getenv("CHAT_TEST_REDIS")
	conns, limit := 10000, 10*time.Second
	if addr == "" {
		conns, limit = 1000, time.Minute
	}
	users := conns / 2
	const workers = 50
	b := presenceBroker(t, addr, time.Minute)
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	changed := make([]bool, conns)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < conns; i += workers {
				p, err := b.Join(ctx, "big", broker.Conn{Client: fmt.Sprintf("c%05d", i), User: fmt.Sprintf("u%05d", i%users)})
				if err != nil {
					errs <- err
					return
				}
				changed[i] = p.Changed
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if took := time.Since(start); took > limit {
		t.Fatalf("%d joins of one room took %v, want under %v", conns, took, limit)
	} else {
		t.Logf("%d joins of one room in %v", conns, took)
	}
	first := 0
	for _, c := range changed {
		if c {
			first++
		}
	}
	if first != users {
		t.Fatalf("%d joins reported a new user, want %d", first, users)
	}
	page, err := b.Members(ctx, "big", broker.MembersQuery{After: "u00099", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := []protocol.Member{{User: "u00100", Connections: 2}, {User: "u00101", Connections: 2}}
	if page.Count != users || !reflect.DeepEqual(page.Members, want) {
		t.Fatalf("a page of the big room: %+v, want count %d and %+v", page, users, want)
	}
}

// BenchmarkJoinLargeRoom joins b.N connections, each of its own user, to one
// room: the cost of a join as the room grows.
func BenchmarkJoinLargeRoom(bm *testing.B) {
	b := presenceBroker(bm, os.Getenv("CHAT_TEST_REDIS"), time.Minute)
	ctx := context.Background()
	bm.ResetTimer()
	for i := 0; i < bm.N; i++ {
		if _, err := b.Join(ctx, "big", broker.Conn{Client: fmt.Sprintf("c%d", i), User: fmt.Sprintf("u%d", i)}); err != nil {
			bm.Fatal(err)
		}
	}
}

// BenchmarkMembersPageOfLargeRoom reads pages of 100 from a room of 10,000.
func BenchmarkMembersPageOfLargeRoom(bm *testing.B) {
	b := presenceBroker(bm, os.Getenv("CHAT_TEST_REDIS"), time.Minute)
	ctx := context.Background()
	for i := 0; i < 10000; i++ {
		if _, err := b.Join(ctx, "big", broker.Conn{Client: fmt.Sprintf("c%d", i), User: fmt.Sprintf("u%05d", i)}); err != nil {
			bm.Fatal(err)
		}
	}
	bm.ResetTimer()
	for i := 0; i < bm.N; i++ {
		after := fmt.Sprintf("u%05d", (i*100)%10000)
		if _, err := b.Members(ctx, "big", broker.MembersQuery{After: after, Limit: 100}); err != nil {
			bm.Fatal(err)
		}
	}
}

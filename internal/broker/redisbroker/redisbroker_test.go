package redisbroker

import (
	"context"
	"os"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/brokertest"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// The broker conformance suite, on an embedded miniredis and, when
// CHAT_TEST_REDIS names one, on a real Redis.

func TestConformanceMiniredis(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, opts broker.Options) brokertest.Cluster {
		m := miniredis.RunT(t)
		return &cluster{addr: m.Addr(), prefix: "conf", opts: opts, mini: m}
	})
}

func TestConformanceRedis(t *testing.T) {
	addr := os.Getenv("CHAT_TEST_REDIS")
	if addr == "" {
		if os.Getenv("CHAT_TEST_REQUIRE") == "1" {
			t.Fatal("CHAT_TEST_REQUIRE=1 but CHAT_TEST_REDIS is not set")
		}
		t.Skip("CHAT_TEST_REDIS not set")
	}
	brokertest.Run(t, func(t *testing.T, opts broker.Options) brokertest.Cluster {
		prefix := "conf-" + broker.NewEpoch()
		t.Cleanup(func() { flushPrefix(t, addr, prefix) })
		return &cluster{addr: addr, prefix: prefix, opts: opts}
	})
}

type cluster struct {
	addr, prefix string
	opts         broker.Options
	mini         *miniredis.Miniredis
	nodes        int
}

func (c *cluster) Node(t *testing.T, h broker.Handler) broker.Broker {
	c.nodes++
	b, err := New(Options{Options: c.opts, Addr: c.addr, Prefix: c.prefix, Node: broker.NewEpoch(), ProbeInterval: time.Second}, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Crash stops a node as a killed process stops: its goroutines and its
// connections end, and its presence stays in Redis to expire.
func (c *cluster) Crash(_ *testing.T, n broker.Broker) error {
	b := n.(*Broker)
	close(b.stop)
	b.mu.Lock()
	ps := b.pubsub
	b.mu.Unlock()
	_ = ps.Close()
	b.wg.Wait()
	return b.rdb.Close()
}

// Advance sleeps: presence scores and the nodes' refresh use the wall clock.
// miniredis expires keys only when its clock is moved, so it is moved in
// small steps alongside, as a real Redis's clock would.
func (c *cluster) Advance(_ *testing.T, d time.Duration) {
	const step = 50 * time.Millisecond
	for left := d; left > 0; left -= step {
		time.Sleep(min(step, left))
		if c.mini != nil {
			c.mini.FastForward(min(step, left))
		}
	}
}

func flushPrefix(_ testing.TB, addr, prefix string) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		rdb.Del(ctx, iter.Val())
	}
}

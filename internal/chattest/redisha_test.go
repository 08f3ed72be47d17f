package chattest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// failoverWithin bounds a failover: sentinels need down-after (1s), a vote
// and a promotion; a cluster needs node-timeout (1s), a vote and a
// promotion. A split vote costs the sentinels one more try.
const failoverWithin = 30 * time.Second

func TestSentinelFailoverKeepsAcknowledgedWrite(t *testing.T) {
	s := StartSentinel(t)
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: s.MasterName, SentinelAddrs: s.SentinelAddrs,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
	})
	defer rdb.Close()

	writeAcked(t, rdb, "k", "before")
	old := s.KillMaster(t)
	killed := time.Now()
	promoted := s.WaitFailover(t, old, failoverWithin)
	t.Logf("sentinels promoted %s %v after %s was killed", promoted, time.Since(killed).Round(time.Millisecond), old)
	if promoted == old {
		t.Fatalf("WaitFailover returned the killed master %s", old)
	}
	if got := s.MasterAddr(t); got != promoted {
		t.Fatalf("MasterAddr = %s, want %s", got, promoted)
	}

	// The same client finds the new master through the sentinels.
	readAgain(t, rdb, "k", "before")
	t.Logf("the failover client read again %v after the kill", time.Since(killed).Round(time.Millisecond))
	if err := rdb.Set(context.Background(), "k", "after", 0).Err(); err != nil {
		t.Fatalf("SET after failover: %v", err)
	}
}

func TestRedisClusterFailoverKeepsAcknowledgedWrite(t *testing.T) {
	c := StartRedisCluster(t)
	if len(c.Addrs) != 6 {
		t.Fatalf("Addrs = %v, want six nodes", c.Addrs)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:       c.Addrs,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
		// go-redis reloads its slot map on MOVED, or once it is this old
		// (default 60s), but not when the slot's master refuses connections
		// (redis/go-redis#3979): without this the client keeps dialling the
		// dead master for a minute after the failover.
		ClusterStateReloadInterval: time.Second,
	})
	defer rdb.Close()

	const key = "room:{lobby}:seq"
	old := c.MasterOf(t, key)
	node, err := rdb.MasterForKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if node.Options().Addr != old {
		t.Fatalf("MasterOf(%q) = %s, but the cluster client routes it to %s", key, old, node.Options().Addr)
	}
	writeAcked(t, node, key, "before")

	c.KillMaster(t, old)
	killed := time.Now()
	promoted := c.WaitFailover(t, key, old, failoverWithin)
	t.Logf("the cluster promoted %s %v after %s was killed", promoted, time.Since(killed).Round(time.Millisecond), old)
	if got := c.MasterOf(t, key); got != promoted {
		t.Fatalf("MasterOf(%q) = %s, want %s", key, got, promoted)
	}

	// The same client finds the new master from the cluster's slot map.
	readAgain(t, rdb, key, "before")
	t.Logf("the cluster client read again %v after the kill", time.Since(killed).Round(time.Millisecond))
	if err := rdb.Set(context.Background(), key, "after", 0).Err(); err != nil {
		t.Fatalf("SET after failover: %v", err)
	}
}

// writeAcked sets key on c's master and waits until a replica holds it.
// SET and WAIT go down one connection (a pipeline): WAIT counts the
// replicas that hold that connection's writes, so one that survives the
// master's death has the key.
func writeAcked(t *testing.T, c *redis.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	var acks *redis.Cmd
	if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, key, value, 0)
		acks = p.Do(ctx, "WAIT", 1, Timeout.Milliseconds())
		return nil
	}); err != nil {
		t.Fatalf("SET %s and WAIT: %v", key, err)
	}
	if n, err := acks.Int(); err != nil || n < 1 {
		t.Fatalf("WAIT 1: %d replicas, %v", n, err)
	}
}

// readAgain retries GET key through c until it answers, up to
// failoverWithin: until the client has found the new master, commands fail.
func readAgain(t *testing.T, c redis.Cmdable, key, want string) {
	t.Helper()
	deadline := time.Now().Add(failoverWithin)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		got, err := c.Get(ctx, key).Result()
		cancel()
		switch {
		case errors.Is(err, redis.Nil):
			t.Fatalf("GET %s after failover: the acknowledged write is lost", key)
		case err == nil && got != want:
			t.Fatalf("GET %s after failover = %q, want %q", key, got, want)
		case err == nil:
			return
		case time.Now().After(deadline):
			t.Fatalf("GET %s: no answer within %v of the failover: %v", key, failoverWithin, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

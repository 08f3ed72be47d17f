package server_test

import (
	"fmt"
	"testing"
	"time"

	"chat/internal/broker/redisbroker"
	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"
)

// redisHA is a Redis with replicas whose master a test can kill and
// start again: a Sentinel setup or a Cluster.
type redisHA struct {
	configure func(c *config.Config)
	// kill SIGKILLs the master of the room's slot.
	kill func(t *testing.T, room string) (old string)
	// failover waits until a replica took over from old and starts old
	// again, as a supervisor would: it becomes a replica, which
	// MinReplicaAcks 1 needs.
	failover func(t *testing.T, old, room string)
}

func sentinelHA(t *testing.T) redisHA {
	s := chattest.StartSentinel(t)
	prefix := chattest.UniquePrefix()
	return redisHA{
		configure: func(c *config.Config) {
			c.Redis.Mode, c.Redis.MasterName, c.Redis.SentinelAddrs, c.Redis.Prefix = "sentinel", s.MasterName, s.SentinelAddrs, prefix
		},
		kill: func(t *testing.T, _ string) string { return s.KillMaster(t) },
		failover: func(t *testing.T, old, _ string) {
			s.WaitFailover(t, old, 30*time.Second)
			s.Revive(t, old)
		},
	}
}

func clusterHA(t *testing.T) redisHA {
	c := chattest.StartRedisCluster(t)
	prefix := chattest.UniquePrefix()
	return redisHA{
		configure: func(cfg *config.Config) {
			cfg.Redis.Mode, cfg.Redis.Addrs, cfg.Redis.Prefix = "cluster", c.Addrs, prefix
		},
		kill: func(t *testing.T, room string) string {
			old := c.MasterOf(t, redisbroker.PartitionTag(room))
			c.KillMaster(t, old)
			return old
		},
		failover: func(t *testing.T, old, room string) {
			c.WaitFailover(t, redisbroker.PartitionTag(room), old, 30*time.Second)
			c.Revive(t, old)
		},
	}
}

// TestFailoverLosesNoAcknowledgedMessage runs two replicas in sentinel
// mode, then in cluster mode (SPEC §15), and kills the Redis master of
// the room (SIGKILL) in the middle of a stream of sends. During the
// failover a send answers unavailable and nothing else; each is retried
// with its key until it is acknowledged. Afterwards the room has its
// epoch, a member that stayed connected has every message once in order,
// and a client that joins with since 0 recovers exactly the acknowledged
// messages, each once.
func TestFailoverLosesNoAcknowledgedMessage(t *testing.T) {
	for _, mode := range []struct {
		name  string
		start func(*testing.T) redisHA
	}{{"sentinel", sentinelHA}, {"cluster", clusterHA}} {
		t.Run(mode.name, func(t *testing.T) { testFailover(t, mode.start(t)) })
	}
}

func testFailover(t *testing.T, ha redisHA) {
	opts := []func(*config.Config){fastSender, ha.configure}
	a, b := chattest.Start(t, opts...), chattest.Start(t, opts...)
	alice, bob := a.DialName(t, "alice"), b.DialName(t, "bob")
	join := alice.Join("ha")
	bob.Join("ha")

	const total, killAt = 60, 20 // m20 is the first send after the kill
	var seqs []int64
	unavailable := 0
	var killed time.Time
	for i := 1; i <= total; i++ {
		if i == killAt {
			old := ha.kill(t, "ha")
			killed = time.Now()
			if r := alice.DoWithin("send", map[string]any{"room": "ha", "text": "m20", "key": "k20"}, faultReply); r.Err == nil || r.Err.Code != protocol.CodeUnavailable {
				t.Fatalf("send right after the master died = %s / %+v, want unavailable", r.Result, r.Err)
			}
			unavailable++
			ha.failover(t, old, "ha")
		}
		deadline := time.Now().Add(faultRecover)
		for {
			r := alice.DoWithin("send", map[string]any{"room": "ha", "text": fmt.Sprintf("m%d", i), "key": fmt.Sprintf("k%d", i)}, faultReply)
			if r.Err == nil {
				var res protocol.SendResult
				r.Decode(t, &res)
				seqs = append(seqs, res.Seq)
				break
			}
			if r.Err.Code != protocol.CodeUnavailable {
				t.Fatalf("send %d during the failover answered %+v, want unavailable", i, r.Err)
			}
			unavailable++
			if time.Now().After(deadline) {
				t.Fatalf("send %d still unavailable %v after the master was killed", i, time.Since(killed))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("acknowledged seqs %v are not consecutive at %d", seqs, i)
		}
	}

	// bob stayed connected on the other replica: every message once, in order.
	for i := 1; i <= total; i++ {
		m := bob.Message("ha")
		if m.Text != fmt.Sprintf("m%d", i) || m.Seq != seqs[i-1] || m.Epoch != join.Epoch {
			t.Fatalf("bob's message %d = %s (seq %d, epoch %s), want m%d at seq %d in epoch %s", i, m.Text, m.Seq, m.Epoch, i, seqs[i-1], join.Epoch)
		}
	}
	bob.Quiet("resync", 200*time.Millisecond)

	// A client that resumes from the start recovers the same, in the same epoch.
	carol := b.DialName(t, "carol")
	var res protocol.JoinResult
	carol.OK("join", map[string]any{"room": "ha", "since": map[string]any{"epoch": join.Epoch, "seq": 0}}, &res)
	if !res.Recovered || res.Epoch != join.Epoch || len(res.History) != total {
		t.Fatalf("resume from 0 = recovered %v, epoch %s (want %s), %d messages (want %d)", res.Recovered, res.Epoch, join.Epoch, len(res.History), total)
	}
	for i, m := range res.History {
		if m.Text != fmt.Sprintf("m%d", i+1) || m.Seq != seqs[i] {
			t.Fatalf("recovered message %d = %s at seq %d, want m%d at seq %d", i, m.Text, m.Seq, i+1, seqs[i])
		}
	}
	t.Logf("failover: %d sends answered unavailable; the stream resumed %v after the kill", unavailable, time.Since(killed))
}

package redisbroker_test

import (
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/brokertest"
	"chat/internal/broker/redisbroker"
	"chat/internal/chattest"
)

// The broker conformance suite in sentinel mode (SPEC §15), on a Sentinel
// setup of the test's own (a master, a replica, three sentinels), with
// every publish confirmed by the replica (MinReplicaAcks 1).
func TestConformanceSentinel(t *testing.T) {
	s := chattest.StartSentinel(t)
	brokertest.Run(t, func(t *testing.T, opts broker.Options) brokertest.Cluster {
		return &sentinelCluster{s: s, prefix: "conf-" + broker.NewEpoch(), opts: opts}
	})
}

type sentinelCluster struct {
	s      *chattest.Sentinel
	prefix string
	opts   broker.Options
}

func (c *sentinelCluster) Node(t *testing.T, h broker.Handler) broker.Broker {
	return newHANode(t, redisbroker.Options{
		Options: c.opts, Mode: redisbroker.ModeSentinel,
		MasterName: c.s.MasterName, SentinelAddrs: c.s.SentinelAddrs, Prefix: c.prefix,
	}, h)
}

// newHANode starts a node of a replicated Redis (sentinel or cluster mode)
// whose publishes a replica confirms (MinReplicaAcks 1).
func newHANode(t *testing.T, o redisbroker.Options, h broker.Handler) broker.Broker {
	t.Helper()
	o.Node, o.ProbeInterval, o.MinReplicaAcks = broker.NewEpoch(), time.Second, 1
	b, err := redisbroker.New(o, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Advance sleeps: a real Redis expires keys by the wall clock.
func (c *sentinelCluster) Advance(_ *testing.T, d time.Duration) { time.Sleep(d) }

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
	b, err := redisbroker.New(redisbroker.Options{
		Options: c.opts, Mode: redisbroker.ModeSentinel,
		MasterName: c.s.MasterName, SentinelAddrs: c.s.SentinelAddrs,
		Prefix: c.prefix, Node: broker.NewEpoch(), ProbeInterval: time.Second,
		MinReplicaAcks: 1,
	}, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Advance sleeps: a real Redis expires keys by the wall clock.
func (c *sentinelCluster) Advance(_ *testing.T, d time.Duration) { time.Sleep(d) }

package redisbroker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/brokertest"
	"chat/internal/broker/redisbroker"
	"chat/internal/chattest"

	"github.com/redis/go-redis/v9"
)

// The broker conformance suite in cluster mode (SPEC §15), on a Redis
// Cluster of the test's own (three masters with a replica each), every
// publish confirmed by a replica (MinReplicaAcks 1).
func TestConformanceCluster(t *testing.T) {
	c := chattest.StartRedisCluster(t)
	brokertest.Run(t, func(t *testing.T, opts broker.Options) brokertest.Cluster {
		return &clusterCluster{addrs: c.Addrs, prefix: "conf-" + broker.NewEpoch(), opts: opts}
	})
}

type clusterCluster struct {
	addrs  []string
	prefix string
	opts   broker.Options
}

func (c *clusterCluster) Node(t *testing.T, h broker.Handler) broker.Broker {
	return newClusterNode(t, c.addrs, c.prefix, c.opts, h)
}

func (c *clusterCluster) Advance(_ *testing.T, d time.Duration) { time.Sleep(d) }

func newClusterNode(t *testing.T, addrs []string, prefix string, opts broker.Options, h broker.Handler) broker.Broker {
	t.Helper()
	return newHANode(t, redisbroker.Options{Options: opts, Mode: redisbroker.ModeCluster, Addrs: addrs, Prefix: prefix}, h)
}

// TestClusterNodeReceivesOnlyItsRoomsTraffic: rooms are published on
// shard channels (SPUBLISH), so a node with members in one room receives
// that room's messages and nothing of the other rooms, whichever shard
// they live on; and no room message is broadcast over the cluster bus to
// every master, as a classic PUBLISH would be.
func TestClusterNodeReceivesOnlyItsRoomsTraffic(t *testing.T) {
	c := chattest.StartRedisCluster(t)
	prefix := "traffic-" + broker.NewEpoch()
	got := make(chan broker.Delivery, 1000)
	listener := newClusterNode(t, c.Addrs, prefix, brokertest.Options, func(d broker.Delivery) {
		if d.Kind == broker.KindMessage {
			got <- d
		}
	})
	publisher := newClusterNode(t, c.Addrs, prefix, brokertest.Options, func(broker.Delivery) {})
	t.Cleanup(func() { _ = listener.Close(); _ = publisher.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := listener.Subscribe(ctx, broker.Room("mine")); err != nil {
		t.Fatal(err)
	}
	busBefore := publishesOverTheBus(t, c.Addrs)
	const perRoom, others = 10, 30
	for i := range perRoom {
		for r := range others + 1 {
			room := fmt.Sprintf("other-%d", r)
			if r == others {
				room = "mine"
			}
			if _, err := publisher.Publish(ctx, broker.Publication{Room: room, From: "alice", Text: fmt.Sprint(i), ID: fmt.Sprintf("%s-%d", room, i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range perRoom {
		select {
		case d := <-got:
			if d.Message.Room != "mine" || d.Message.Seq != int64(i+1) {
				t.Fatalf("delivery %d = %s seq %d, want mine seq %d", i, d.Message.Room, d.Message.Seq, i+1)
			}
		case <-ctx.Done():
			t.Fatalf("only %d of %d messages of the room arrived", i, perRoom)
		}
	}
	// A marker on the listener's room, then the count: what arrived
	// before the marker is all the listener was sent.
	if _, err := publisher.Publish(ctx, broker.Publication{Room: "mine", From: "alice", Text: "marker", ID: "marker"}); err != nil {
		t.Fatal(err)
	}
	<-got
	if n := redisbroker.RoomTraffic(listener); n != perRoom+1 {
		t.Fatalf("the listener received %d room publications, want %d (its room's only; %d were made in %d other rooms)", n, perRoom+1, perRoom*others, others)
	}
	if bus := publishesOverTheBus(t, c.Addrs) - busBefore; bus != 0 {
		t.Fatalf("%d classic publishes crossed the cluster bus during room traffic, want 0", bus)
	}
	t.Logf("listener received %d room publications of %d made", perRoom+1, perRoom*(others+1)+1)
}

// publishesOverTheBus sums the classic PUBLISH messages every node sent
// over the cluster bus (a classic publish goes to every node; a shard
// publish only to its shard's replicas, counted apart).
func publishesOverTheBus(t *testing.T, addrs []string) int64 {
	t.Helper()
	var sum int64
	for _, addr := range addrs {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		info, err := rdb.ClusterInfo(context.Background()).Result()
		rdb.Close()
		if err != nil {
			continue // a node killed by another test
		}
		for _, line := range strings.Split(info, "\r\n") {
			var n int64
			if _, err := fmt.Sscanf(line, "cluster_stats_messages_publish_sent:%d", &n); err == nil {
				sum += n
			}
		}
	}
	return sum
}

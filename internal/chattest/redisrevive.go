package chattest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Revive starts the killed server at addr again, empty, on its port, as a
// supervisor restarts a crashed Redis: the sentinels then make it a
// replica of the new master, which it syncs from. Until then a master
// whose sends need a replica's confirmation (MinReplicaAcks) has none.
//
// It starts the server only once every sentinel lists it as a replica of
// the new master (else an empty server claiming to be a master could be
// taken for one, and the new master made its replica: the data lost), and
// returns once it is that replica, in sync.
func (s *Sentinel) Revive(t testing.TB, addr string) {
	t.Helper()
	known := func(ctx context.Context) error {
		for _, c := range s.sentinels {
			replicas, err := c.Replicas(ctx, s.MasterName).Result()
			if err != nil {
				return err
			}
			listed := false
			for _, r := range replicas {
				listed = listed || net.JoinHostPort(r["ip"], r["port"]) == addr
			}
			if !listed {
				return fmt.Errorf("a sentinel does not list %s as a replica yet: %v", addr, replicas)
			}
		}
		return nil
	}
	s.procs.waitUntil(t, haReady, addr+" known as a replica", known)
	// --dir: a replica's sync writes its dump there, not in the package.
	s.procs.revive(t, addr, func(port int) []string { return redisArgs(port, t.TempDir()) })
	s.procs.waitUntil(t, haReady, addr+" back as a replica in sync", func(ctx context.Context) error {
		for _, c := range s.sentinels {
			replicas, err := c.Replicas(ctx, s.MasterName).Result()
			if err != nil {
				return err
			}
			if !replicaSeen(replicas, addr) {
				return fmt.Errorf("a sentinel does not see %s up as a replica: %v", addr, replicas)
			}
		}
		return linkUp(ctx, s.data[addr])
	})
}

// Revive starts the killed node at addr again with its cluster config: it
// rejoins the cluster and, its slots having moved to its replica, becomes
// that new master's replica.
func (c *RedisCluster) Revive(t testing.TB, addr string) {
	t.Helper()
	c.procs.revive(t, addr, func(port int) []string { return clusterNodeArgs(port, c.dir) })
}

// revive kills the process at addr (if it still runs) and starts
// redis-server there again with args.
func (ps haProcs) revive(t testing.TB, addr string, args func(port int) []string) {
	t.Helper()
	p, ok := ps[addr]
	if !ok {
		t.Fatalf("%s is none of this setup's servers", addr)
	}
	p.kill()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := startRedisProcess(bin, port, args(port)...)
	if err != nil {
		t.Fatal(err)
	}
	ps[addr] = fresh
	t.Cleanup(fresh.kill)
}

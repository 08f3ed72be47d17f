package chattest

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Revive starts the killed server at addr again, empty, on its port, as a
// supervisor restarts a crashed Redis: the sentinels then make it a
// replica of the new master, which it syncs from. Until then a master
// whose sends need a replica's confirmation (MinReplicaAcks) has none.
func (s *Sentinel) Revive(t testing.TB, addr string) {
	t.Helper()
	p, ok := s.procs[addr]
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
	// --dir: a replica's sync writes its dump there, not in the package.
	fresh, err := startRedisProcess(bin, port, redisArgs(port, t.TempDir())...)
	if err != nil {
		t.Fatal(err)
	}
	s.procs[addr] = fresh
	t.Cleanup(fresh.kill)
}

// Revive starts the killed node at addr again with its cluster config: it
// rejoins the cluster and, its slots having moved to its replica, becomes
// that new master's replica.
func (c *RedisCluster) Revive(t testing.TB, addr string) {
	t.Helper()
	p, ok := c.procs[addr]
	if !ok {
		t.Fatalf("%s is none of this cluster's nodes", addr)
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
	fresh, err := startRedisProcess(bin, port, clusterNodeArgs(port, c.dir)...)
	if err != nil {
		t.Fatal(err)
	}
	c.procs[addr] = fresh
	t.Cleanup(fresh.kill)
}

package chattest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Settings of the Sentinel and Cluster setups, chosen so that a failover
// takes a few seconds instead of the production defaults' tens of seconds.
const (
	// sentinelDownAfter is how long a master may not answer before a
	// sentinel calls it down; a failover starts about a second after it.
	sentinelDownAfter = time.Second
	// sentinelFailoverTimeout also spaces two failover attempts of one
	// sentinel (twice this): a split vote costs that long.
	sentinelFailoverTimeout = 5 * time.Second
	// clusterNodeTimeout plays sentinelDownAfter's part in a cluster; a
	// replica asks for votes 0.5-1s after its master is marked failed.
	clusterNodeTimeout = time.Second
	// clusterBusOffset: a cluster node also listens on its port plus this,
	// for the cluster bus; both must be free.
	clusterBusOffset = 10000
	// haReady bounds how long a whole setup may take to become healthy:
	// processes, replication, sentinels discovering each other (their hello
	// messages are two seconds apart) or the cluster agreeing on its slots.
	haReady = 30 * time.Second
)

// Sentinel is a Sentinel setup of the test's own: one master, one replica,
// three sentinels (quorum 2), all on 127.0.0.1 free ports, without
// persistence. A killed master is not restarted; every process is killed
// when the test ends. Its methods are for the test's goroutine.
type Sentinel struct {
	MasterName    string   // "chatmaster"
	SentinelAddrs []string // the three sentinels

	procs     haProcs                  // master, replica and sentinels by address
	data      map[string]*redis.Client // master and replica by address
	sentinels []*redis.SentinelClient  // in SentinelAddrs' order
}

// StartSentinel runs a master and its replica, then three sentinels
// watching the master. It returns once every sentinel reports that master,
// sees the replica and knows the other two sentinels (without which a
// failover cannot be voted), and the replica is in sync. Without
// redis-server the test is skipped, or fails under CHAT_TEST_REQUIRE=1.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	bin := needRedis(t, "redis-server")
	// Debian's redis-sentinel is redis-server under another name; without
	// that package redis-server --sentinel is the same program.
	sentinelBin, sentinelArgs := bin, []string{"--sentinel"}
	if b, err := exec.LookPath("redis-sentinel"); err == nil {
		sentinelBin, sentinelArgs = b, nil
	}
	dir := t.TempDir()
	s := &Sentinel{MasterName: "chatmaster", procs: haProcs{}, data: map[string]*redis.Client{}}

	master := s.procs.start(t, FreePort, func(port int) (*RedisServer, error) {
		return startRedisProcess(bin, port, redisArgs(port, dir)...)
	})
	s.data[master.Addr] = haClient(t, master.Addr)
	mhost, mport, _ := net.SplitHostPort(master.Addr)
	replica := s.procs.start(t, FreePort, func(port int) (*RedisServer, error) {
		return startRedisProcess(bin, port, append(redisArgs(port, dir), "--replicaof", mhost, mport)...)
	})
	s.data[replica.Addr] = haClient(t, replica.Addr)
	// In sync before the sentinels start: their first INFO to the master
	// then lists the replica, instead of the next one ten seconds later.
	s.procs.waitUntil(t, haReady, "replica in sync", func(ctx context.Context) error {
		return linkUp(ctx, s.data[replica.Addr])
	})

	for range 3 {
		sentinel := s.procs.start(t, FreePort, func(port int) (*RedisServer, error) {
			conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", port))
			// The sentinel rewrites this file with what it learns.
			name, downAfter, failoverTimeout := s.MasterName, sentinelDownAfter.Milliseconds(), sentinelFailoverTimeout.Milliseconds()
			text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n", port, dir) +
				fmt.Sprintf("sentinel monitor %s %s %s 2\n", name, mhost, mport) +
				fmt.Sprintf("sentinel down-after-milliseconds %s %d\n", name, downAfter) +
				fmt.Sprintf("sentinel failover-timeout %s %d\n", name, failoverTimeout) +
				fmt.Sprintf("sentinel parallel-syncs %s 1\n", name)
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				return nil, err
			}
			return startRedisProcess(sentinelBin, port, append([]string{conf}, sentinelArgs...)...)
		})
		s.SentinelAddrs = append(s.SentinelAddrs, sentinel.Addr)
		c := redis.NewSentinelClient(haOptions(sentinel.Addr))
		t.Cleanup(func() { _ = c.Close() })
		s.sentinels = append(s.sentinels, c)
	}

	s.procs.waitUntil(t, haReady, "sentinels agree", func(ctx context.Context) error {
		for i, c := range s.sentinels {
			at := s.SentinelAddrs[i]
			got, err := getMasterAddr(ctx, c, s.MasterName)
			if err != nil {
				return fmt.Errorf("sentinel %s: %w", at, err)
			}
			if got != master.Addr {
				return fmt.Errorf("sentinel %s reports master %s, not %s", at, got, master.Addr)
			}
			others, err := c.Sentinels(ctx, s.MasterName).Result()
			if err != nil {
				return fmt.Errorf("sentinel %s: SENTINEL sentinels: %w", at, err)
			}
			if len(others) != len(s.sentinels)-1 {
				return fmt.Errorf("sentinel %s knows %d other sentinels, not %d", at, len(others), len(s.sentinels)-1)
			}
			replicas, err := c.Replicas(ctx, s.MasterName).Result()
			if err != nil {
				return fmt.Errorf("sentinel %s: SENTINEL replicas: %w", at, err)
			}
			if !replicaSeen(replicas, replica.Addr) {
				return fmt.Errorf("sentinel %s does not see replica %s up: %v", at, replica.Addr, replicas)
			}
		}
		return linkUp(ctx, s.data[replica.Addr])
	})
	return s
}

// MasterAddr is the master as a majority of the sentinels report it
// (SENTINEL get-master-addr-by-name); during a failover it waits, up to
// Timeout, for them to agree.
func (s *Sentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	var addr string
	s.procs.waitUntil(t, Timeout, "sentinels agree on a master", func(ctx context.Context) error {
		votes := map[string]int{}
		var errs []error
		for i, c := range s.sentinels {
			got, err := getMasterAddr(ctx, c, s.MasterName)
			if err != nil {
				errs = append(errs, fmt.Errorf("sentinel %s: %w", s.SentinelAddrs[i], err))
				continue
			}
			votes[got]++
			if votes[got] > len(s.sentinels)/2 {
				addr = got
				return nil
			}
		}
		return fmt.Errorf("no majority among %v: %v", votes, errors.Join(errs...))
	})
	return addr
}

// KillMaster SIGKILLs the current master's process and returns its address.
func (s *Sentinel) KillMaster(t testing.TB) string {
	t.Helper()
	addr := s.MasterAddr(t)
	p, ok := s.procs[addr]
	if !ok || s.data[addr] == nil {
		t.Fatalf("the sentinels report master %s, which is none of this setup's servers", addr)
	}
	p.kill()
	return addr
}

// WaitFailover waits until every sentinel reports a master other than old
// and that master answers ROLE as a master; it returns that master.
func (s *Sentinel) WaitFailover(t testing.TB, old string, within time.Duration) string {
	t.Helper()
	var addr string
	s.procs.waitUntil(t, within, "sentinel failover from "+old, func(ctx context.Context) error {
		addr = ""
		for i, c := range s.sentinels {
			got, err := getMasterAddr(ctx, c, s.MasterName)
			if err != nil {
				return fmt.Errorf("sentinel %s: %w", s.SentinelAddrs[i], err)
			}
			if got == old {
				return fmt.Errorf("sentinel %s still reports %s", s.SentinelAddrs[i], old)
			}
			if addr != "" && got != addr {
				return fmt.Errorf("sentinels disagree: %s and %s", addr, got)
			}
			addr = got
		}
		c := s.data[addr]
		if c == nil {
			return fmt.Errorf("the sentinels report master %s, which is none of this setup's servers", addr)
		}
		return isMaster(ctx, c)
	})
	return addr
}

// RedisCluster is a Redis Cluster of the test's own: three masters with one
// replica each, on 127.0.0.1 free ports, without persistence. A killed
// master is not restarted; every process is killed when the test ends. Its
// methods are for the test's goroutine.
type RedisCluster struct {
	Addrs []string // every node, masters first

	procs   haProcs                  // every node by address
	clients map[string]*redis.Client // every node by address
	dir     string                   // the nodes' directory and cluster config files
}

// StartRedisCluster runs six cluster nodes and joins them with redis-cli
// --cluster create. It returns once every node says cluster_state:ok and
// knows all six, and every replica's link to its master is up. Without
// redis-server or redis-cli the test is skipped, or fails under
// CHAT_TEST_REQUIRE=1.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	bin := needRedis(t, "redis-server")
	cli := needRedis(t, "redis-cli")
	dir := t.TempDir()
	c := &RedisCluster{procs: haProcs{}, clients: map[string]*redis.Client{}, dir: dir}

	var addrs []string
	for range 6 {
		node := c.procs.start(t, clusterPort, func(port int) (*RedisServer, error) {
			return startRedisProcess(bin, port, clusterNodeArgs(port, dir)...)
		})
		addrs = append(addrs, node.Addr)
		c.clients[node.Addr] = haClient(t, node.Addr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), haReady)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Logf("node output:\n%s", c.procs.output())
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}

	roles := map[string]string{}
	c.procs.waitUntil(t, haReady, "cluster ready", func(ctx context.Context) error {
		for _, addr := range addrs {
			rdb := c.clients[addr]
			info, err := rdb.ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("%s: CLUSTER INFO: %w", addr, err)
			}
			if st := infoField(info, "cluster_state"); st != "ok" {
				return fmt.Errorf("%s: cluster_state:%s", addr, st)
			}
			if n := infoField(info, "cluster_known_nodes"); n != strconv.Itoa(len(addrs)) {
				return fmt.Errorf("%s: cluster_known_nodes:%s", addr, n)
			}
			repl, err := rdb.Info(ctx, "replication").Result()
			if err != nil {
				return fmt.Errorf("%s: INFO replication: %w", addr, err)
			}
			roles[addr] = infoField(repl, "role")
			if roles[addr] == "slave" {
				if st := infoField(repl, "master_link_status"); st != "up" {
					return fmt.Errorf("replica %s: master_link_status:%s", addr, st)
				}
			}
		}
		return nil
	})

	for _, want := range []string{"master", "slave"} {
		for _, addr := range addrs {
			if roles[addr] == want {
				c.Addrs = append(c.Addrs, addr)
			}
		}
	}
	if len(c.Addrs) != len(addrs) || roles[c.Addrs[2]] != "master" || roles[c.Addrs[3]] != "slave" {
		t.Fatalf("want three masters and three replicas, have roles %v", roles)
	}
	return c
}

// MasterOf is the address of the master that owns key's slot, as a live
// node reports it (CLUSTER KEYSLOT, CLUSTER SLOTS).
func (c *RedisCluster) MasterOf(t testing.TB, key string) string {
	t.Helper()
	var addr string
	c.procs.waitUntil(t, Timeout, "master of "+key, func(ctx context.Context) error {
		var errs []error
		for _, node := range c.Addrs {
			if !c.procs[node].alive() {
				continue
			}
			var err error
			if addr, err = slotMaster(ctx, c.clients[node], key); err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", node, err))
		}
		return fmt.Errorf("no live node answers: %w", errors.Join(errs...))
	})
	return addr
}

// KillMaster SIGKILLs the node at addr.
func (c *RedisCluster) KillMaster(t testing.TB, addr string) {
	t.Helper()
	p, ok := c.procs[addr]
	if !ok {
		t.Fatalf("%s is none of this cluster's nodes %v", addr, c.Addrs)
	}
	p.kill()
}

// WaitFailover waits until every live node says cluster_state:ok and that
// key's slot is served by the same master other than old, and that master
// answers ROLE as a master; it returns that master.
func (c *RedisCluster) WaitFailover(t testing.TB, key string, old string, within time.Duration) string {
	t.Helper()
	var addr string
	c.procs.waitUntil(t, within, "cluster failover from "+old, func(ctx context.Context) error {
		addr = ""
		for _, node := range c.Addrs {
			if !c.procs[node].alive() {
				continue
			}
			rdb := c.clients[node]
			info, err := rdb.ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("%s: CLUSTER INFO: %w", node, err)
			}
			if st := infoField(info, "cluster_state"); st != "ok" {
				return fmt.Errorf("%s: cluster_state:%s", node, st)
			}
			got, err := slotMaster(ctx, rdb, key)
			if err != nil {
				return fmt.Errorf("%s: %w", node, err)
			}
			if got == old {
				return fmt.Errorf("%s: %s still serves %q", node, old, key)
			}
			if addr != "" && got != addr {
				return fmt.Errorf("nodes disagree on who serves %q: %s and %s", key, addr, got)
			}
			addr = got
		}
		if addr == "" {
			return errors.New("no live node")
		}
		rdb := c.clients[addr]
		if rdb == nil {
			return fmt.Errorf("%q is served by %s, none of this cluster's nodes", key, addr)
		}
		return isMaster(ctx, rdb)
	})
	return addr
}

// haProcs is every process of one setup by address, for killing and for
// their output when a wait fails.
type haProcs map[string]*RedisServer

// start runs a process on a port from pick. The port may be taken again
// before the process binds it: the process then exits, and another port is
// tried. The process is killed when the test ends.
func (ps haProcs) start(t testing.TB, pick func(testing.TB) int, start func(port int) (*RedisServer, error)) *RedisServer {
	t.Helper()
	var last error
	for range 3 {
		p, err := start(pick(t))
		if err == nil {
			t.Cleanup(p.kill)
			ps[p.Addr] = p
			return p
		}
		last = err
	}
	t.Fatal(last)
	return nil
}

// waitUntil polls check until it returns nil, and fails the test with its
// last error, and every process's output, once within has passed.
func (ps haProcs) waitUntil(t testing.TB, within time.Duration, what string, check func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("process output:\n%s", ps.output())
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// output is the last lines each process printed.
func (ps haProcs) output() string {
	addrs := make([]string, 0, len(ps))
	for addr := range ps {
		addrs = append(addrs, addr)
	}
	sort.Strings(addrs)
	var b strings.Builder
	for _, addr := range addrs {
		lines := strings.Split(strings.TrimRight(ps[addr].out.String(), "\n"), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", addr, strings.Join(lines, "\n"))
	}
	return b.String()
}

// alive says whether the process has not ended.
func (s *RedisServer) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// needRedis is the path of a Redis program, or skips the test without it
// (fails it under CHAT_TEST_REQUIRE=1).
func needRedis(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if Required() {
			t.Fatalf("CHAT_TEST_REQUIRE=1 but %s is not installed", name)
		}
		t.Skip("needs " + name)
	}
	return bin
}

// redisArgs are a data node's common flags: no persistence; a working
// directory of the test's own, where a replica's full sync writes its
// temporary RDB file; and a full sync that starts at once instead of
// waiting five seconds for more replicas to share it.
func redisArgs(port int, dir string) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir,
		"--repl-diskless-sync-delay", "0"}
}

// startRedisProcess runs bin with args, expected to serve 127.0.0.1:port,
// and waits until it answers PING. Every server of the tests starts here
// (startRedisServer for a plain one).
func startRedisProcess(bin string, port int, args ...string) (*RedisServer, error) {
	s := &RedisServer{Addr: fmt.Sprintf("127.0.0.1:%d", port), exited: make(chan struct{}), out: &lockedBuffer{}}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(redisStart)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s on port %d exited: %s", filepath.Base(bin), port, s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			s.kill()
			return nil, fmt.Errorf("%s on port %d did not answer PING within %v: %v; output: %s", filepath.Base(bin), port, redisStart, err, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clusterPort is a free port whose cluster bus port is free too (and
// exists: FreePort's ports reach 60999).
func clusterPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := FreePort(t)
		if port+clusterBusOffset > 65535 {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+clusterBusOffset))
		if err != nil {
			continue
		}
		_ = l.Close()
		return port
	}
	t.Fatal("no free port with a free cluster bus port")
	return 0
}

// haOptions are for the helpers' own connections: fail fast, as every
// wait polls.
func haOptions(addr string) *redis.Options {
	return &redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: time.Second, WriteTimeout: time.Second, PoolSize: 2}
}

func haClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(haOptions(addr))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func getMasterAddr(ctx context.Context, c *redis.SentinelClient, name string) (string, error) {
	hp, err := c.GetMasterAddrByName(ctx, name).Result()
	if err != nil {
		return "", fmt.Errorf("SENTINEL get-master-addr-by-name: %w", err)
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("SENTINEL get-master-addr-by-name: %v", hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// replicaSeen says whether SENTINEL replicas lists addr as a replica that
// is up and linked to its master.
func replicaSeen(replicas []map[string]string, addr string) bool {
	for _, r := range replicas {
		if net.JoinHostPort(r["ip"], r["port"]) != addr {
			continue
		}
		flags := r["flags"]
		return strings.Contains(flags, "slave") && !strings.Contains(flags, "down") &&
			!strings.Contains(flags, "disconnected") && r["master-link-status"] == "ok"
	}
	return false
}

// linkUp checks that a replica's link to its master is up (INFO
// replication).
func linkUp(ctx context.Context, c *redis.Client) error {
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("INFO replication: %w", err)
	}
	if st := infoField(info, "master_link_status"); st != "up" {
		return fmt.Errorf("master_link_status:%s", st)
	}
	return nil
}

// isMaster checks that the server answers ROLE as a master.
func isMaster(ctx context.Context, c *redis.Client) error {
	role, err := c.Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("ROLE: %w", err)
	}
	if len(role) == 0 || role[0] != "master" {
		return fmt.Errorf("ROLE: %v", role)
	}
	return nil
}

// slotMaster is the master serving key's slot as c's node sees it.
func slotMaster(ctx context.Context, c *redis.Client, key string) (string, error) {
	slot, err := c.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return "", fmt.Errorf("CLUSTER KEYSLOT: %w", err)
	}
	ranges, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("CLUSTER SLOTS: %w", err)
	}
	for _, r := range ranges {
		if int64(r.Start) <= slot && slot <= int64(r.End) && len(r.Nodes) > 0 {
			return r.Nodes[0].Addr, nil
		}
	}
	return "", fmt.Errorf("slot %d is served by no node", slot)
}

// infoField is one field of an INFO or CLUSTER INFO answer.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// clusterNodeArgs are a cluster node's arguments: its config file (nodes
// and slots) lives in dir, where a restarted node finds it again.
func clusterNodeArgs(port int, dir string) []string {
	return append(redisArgs(port, dir),
		"--cluster-enabled", "yes",
		"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
		"--cluster-node-timeout", strconv.FormatInt(clusterNodeTimeout.Milliseconds(), 10))
}

package chattest

import (
	"bytes"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RedisServer is a redis-server process of the test's own, on a free port,
// without persistence. The test owns it alone: it may pause it (SIGSTOP)
// and resume it, which it must never do to a Redis that others share.
type RedisServer struct {
	Addr   string // 127.0.0.1:port
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has ended and been reaped
	out    *lockedBuffer // what the server printed, for failure messages
}

// redisStart bounds how long a started redis-server may take to answer PING.
const redisStart = 10 * time.Second

// StartRedisServer runs a private redis-server and kills it when the test
// ends. Without redis-server in PATH the test is skipped, or fails under
// CHAT_TEST_REQUIRE=1.
func StartRedisServer(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if Required() {
			t.Fatal("CHAT_TEST_REQUIRE=1 but redis-server is not installed")
		}
		t.Skip("needs redis-server")
	}
	// FreePort's port may be taken again before redis-server binds it: the
	// server then exits, and another port is tried.
	var last error
	for range 3 {
		s, err := startRedisServer(bin, FreePort(t))
		if err == nil {
			t.Cleanup(s.kill)
			return s
		}
		last = err
	}
	t.Fatal(last)
	return nil
}

func startRedisServer(bin string, port int) (*RedisServer, error) {
	return startRedisProcess(bin, port, "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no")
}

// PID is the server's process id.
func (s *RedisServer) PID() int { return s.cmd.Process.Pid }

// Pause stops the process with SIGSTOP: its sockets stay open and the
// kernel still accepts connections and buffers what is sent, but nothing is
// answered.
func (s *RedisServer) Pause(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.PID(), syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP redis-server: %v", err)
	}
}

// Resume continues a paused process with SIGCONT.
func (s *RedisServer) Resume(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.PID(), syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT redis-server: %v", err)
	}
}

// Restart kills the server and starts an empty one on the same address, as
// a Redis without persistence comes back after a crash.
func (s *RedisServer) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	var port int
	if _, err := fmt.Sscanf(s.Addr, "127.0.0.1:%d", &port); err != nil {
		t.Fatal(err)
	}
	fresh, err := startRedisServer(bin, port)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd, s.exited, s.out = fresh.cmd, fresh.exited, fresh.out
}

// kill ends the server, paused or not (SIGKILL needs no SIGCONT), and
// waits for it.
func (s *RedisServer) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// lockedBuffer is written by exec's copying goroutines and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

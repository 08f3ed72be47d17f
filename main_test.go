package main

import (
	"chat/internal/config"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"chat/internal/chattest"

	"github.com/gorilla/websocket"
)

// TestBinaryShutsDownGracefully builds and runs the real binary, then sends
// it SIGTERM: /readyz answers 503 at once, every connection is closed with
// 1001, and the process exits 0.
func TestBinaryShutsDownGracefully(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := buildBinary(t)
	port := chattest.FreePort(t)
	cfg := filepath.Join(dir, "chat.yaml")
	metricsPort := chattest.FreePort(t)
	yaml := fmt.Sprintf("Name: chat\nHost: 127.0.0.1\nPort: %d\nLog:\n  Level: severe\nShutdown:\n  WrapUpTime: 1s\n  WaitTime: 8s\nChat:\n  DrainTimeout: 3s\n"+
		"DevServer:\n  Enabled: true\n  Host: 127.0.0.1\n  Port: %d\n  EnablePprof: false\n", port, metricsPort)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitStatus(t, base+"/readyz", http.StatusOK)
	var conns []*websocket.Conn
	for _, name := range []string{"alice", "bob"} {
		ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/ws?name=%s", port, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, ws)
	}

	checkMetrics(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, base+"/readyz", http.StatusServiceUnavailable)
	for _, ws := range conns {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, _, err := ws.ReadMessage()
			if err == nil {
				continue
			}
			if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
				t.Fatalf("connection ended with %v, want close 1001", err)
			}
			break
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("process exited with %v, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("process did not exit")
	}
}

func waitStatus(t *testing.T, url string, status int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d (last: %v)", url, status, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildBinary builds the service once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chat-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "chat")
		build := exec.Command("go", "build", "-o", binPath, ".")
		build.Stderr = os.Stderr
		buildErr = build.Run()
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return binPath
}

// TestKilledReplicaLeavesPresenceWithinTTL kills a replica (SIGKILL: no
// cleanup) and watches its connections leave members, rooms and users on
// the surviving replica within Chat.PresenceTTL.
func TestKilledReplicaLeavesPresenceWithinTTL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	addr, prefix := chattest.RedisAddr(t), chattest.UniquePrefix()
	const ttl = 2 * time.Second
	dir := t.TempDir()
	port := chattest.FreePort(t)
	cfg := filepath.Join(dir, "chat.yaml")
	yaml := fmt.Sprintf("Name: chat\nHost: 127.0.0.1\nPort: %d\nLog:\n  Level: severe\nChat:\n  PresenceTTL: %s\nRedis:\n  Addr: %s\n  Prefix: %s\n", port, ttl, addr, prefix)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildBinary(t), "-f", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitStatus(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", port), http.StatusOK)

	survivor := chattest.Start(t, chattest.WithRedis(addr, prefix), func(c *config.Config) { c.Chat.PresenceTTL = ttl })
	doomed, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/ws?name=ghost", port), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer doomed.Close()
	if err := doomed.WriteJSON(map[string]any{"type": "join", "room": "haunt", "id": 1}); err != nil {
		t.Fatal(err)
	}
	watcher := survivor.DialName(t, "watcher")
	watcher.Join("haunt")
	online := func() (members, connections int) {
		var m struct{ Members []struct{ User string } }
		watcher.OK("members", map[string]any{"room": "haunt"}, &m)
		n, err := survivor.Node.UserConnections(context.Background(), "ghost")
		if err != nil {
			t.Fatal(err)
		}
		return len(m.Members), n
	}
	deadline := time.Now().Add(5 * time.Second)
	for m, n := online(); m != 2 || n != 1; m, n = online() {
		if time.Now().After(deadline) {
			t.Fatalf("ghost never showed up: %d members, %d connections", m, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for m, n := online(); m != 1 || n != 0; m, n = online() {
		if time.Since(killed) > ttl+time.Second {
			t.Fatalf("still present %v after the kill: %d members, %d connections", time.Since(killed), m, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("presence gone %v after the kill (PresenceTTL %v)", time.Since(killed), ttl)
}

// checkMetrics reads go-zero's DevServer /metrics and looks for the
// service's own metrics (SPEC §7), with the two open connections counted.
func checkMetrics(t *testing.T, url string) {
	t.Helper()
	waitStatus(t, url, http.StatusOK)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"chat_connections 2", "chat_rooms ", "chat_messages_received_total ",
		"chat_events_delivered_total ", "chat_slow_consumer_closes_total ", "chat_broker_publish_seconds_bucket",
		"chat_broker_errors_total "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics has no %q", want)
		}
	}
}

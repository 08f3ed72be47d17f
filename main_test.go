package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	bin := filepath.Join(dir, "chat")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build: %v", err)
	}
	port := chattest.FreePort(t)
	cfg := filepath.Join(dir, "chat.yaml")
	yaml := fmt.Sprintf("Name: chat\nHost: 127.0.0.1\nPort: %d\nLog:\n  Level: severe\nShutdown:\n  WrapUpTime: 1s\n  WaitTime: 8s\nChat:\n  DrainTimeout: 3s\n", port)
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

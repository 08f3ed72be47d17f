package server_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
)

// Every response, the page's files as much as the API's answers and
// refusals, carries SPEC §11's security headers.
func TestEveryResponseCarriesTheSecurityHeaders(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.ApiKey = "key" })
	host := strings.TrimPrefix(s.URL, "http://")
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/", http.StatusOK},
		{"/app.js", http.StatusOK},
		{"/style.css", http.StatusOK},
		{"/healthz", http.StatusOK},
		{"/readyz", http.StatusOK},
		{"/api/rooms", http.StatusOK},
		{"/api/rooms/bad%20name/messages", http.StatusBadRequest},
		{"/api/stats", http.StatusForbidden},
		{"/api/nothing", http.StatusNotFound},
		{"/ws?name=system", http.StatusBadRequest},
		{"/ws?name=alice", http.StatusBadRequest}, // not an upgrade request
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(s.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'self'", "connect-src 'self' ws://" + host + " wss://" + host, "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			if got := resp.Header.Get("Referrer-Policy"); got != "no-referrer" {
				t.Errorf("Referrer-Policy %q", got)
			}
		})
	}
}

// openDescriptors counts this process's open file descriptors.
func openDescriptors(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(fds)
}

// waitClosedByServer reads from conn until the server closes it, and fails
// when that takes longer than within.
func waitClosedByServer(conn net.Conn, within time.Duration) error {
	_ = conn.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return err
	}
	return nil // EOF or reset: the server closed it
}

// Slowloris: clients that send half a request header, or trickle it a byte
// at a time, are cut after Chat.ReadHeaderTimeout and leave no descriptor
// behind; an idle keep-alive connection goes after Chat.IdleTimeout.
func TestSlowHeadersAndIdleConnectionsAreCut(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) {
		c.Chat.ReadHeaderTimeout = time.Second
		c.Chat.IdleTimeout = time.Second
	})
	addr := strings.TrimPrefix(s.URL, "http://")
	before := openDescriptors(t)
	const halfOpen, trickling = 200, 20
	// The bound is generous: the claim is that they go, not how fast.
	const within = time.Second + 15*time.Second

	var wg sync.WaitGroup
	errs := make(chan error, halfOpen+trickling+1)
	run := func(f func(net.Conn) error) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			errs <- f(conn)
		}()
	}
	for range halfOpen {
		run(func(conn net.Conn) error {
			if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
				return err
			}
			return waitClosedByServer(conn, within)
		})
	}
	for range trickling {
		run(func(conn net.Conn) error {
			closed := make(chan error, 1)
			go func() { closed <- waitClosedByServer(conn, within) }()
			header := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)
			for i := range len(header) {
				if _, err := io.WriteString(conn, header[i:i+1]); err != nil {
					break // the server closed it
				}
				select {
				case err := <-closed:
					return err
				case <-time.After(100 * time.Millisecond):
				}
			}
			return <-closed
		})
	}
	run(func(conn net.Conn) error { // a whole request, then idle on keep-alive
		if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return waitClosedByServer(conn, within)
	})
	if open := openDescriptors(t); open < before+halfOpen {
		t.Fatalf("%d descriptors open with the slow clients, %d before", open, before)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a slow client was not cut: %v", err)
		}
	}
	// The server's ends go with the clients' (a few may linger briefly).
	deadline := time.Now().Add(15 * time.Second)
	for openDescriptors(t) > before+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open after the slow clients were cut, %d before", openDescriptors(t), before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The HTTP timeouts stop at the upgrade: a WebSocket that stays quiet far
// longer than both is still served.
func TestHTTPTimeoutsDoNotCutWebSockets(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) {
		c.Chat.ReadHeaderTimeout = 500 * time.Millisecond
		c.Chat.IdleTimeout = 500 * time.Millisecond
	})
	c := s.DialName(t, "quiet")
	time.Sleep(2 * time.Second)
	c.OK("rooms", nil, nil)
}

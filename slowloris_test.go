package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"chat/internal/chattest"
)

// TestSlowlorisSocketsHoldNoDescriptorAfterTheTimeout is SPEC §11's claim
// about slow headers, checked from outside the process: the real binary
// gets 3,000 connections that each send half a request header and never
// finish it; they hold one descriptor each while they are open, and 15 s
// after Chat.ReadHeaderTimeout the server has closed every one and holds
// no descriptor for any of them.
func TestSlowlorisSocketsHoldNoDescriptorAfterTheTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and opens 3,000 sockets")
	}
	const (
		halfOpen          = 3000
		readHeaderTimeout = 2 * time.Second
		// after is SPEC §11's bound, counted from the last connection:
		// each one's timeout starts when the server accepts it.
		after = 15 * time.Second
		// slack absorbs a descriptor the runtime or go-zero opens by itself.
		slack = 5
	)
	// The test holds the clients' ends and the binary the server's; both
	// inherit this limit (Go raises the soft limit to the hard one).
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil || limit.Cur < 8000 {
		t.Skipf("needs RLIMIT_NOFILE of at least 8000 for %d sockets on both ends; have %d (%v)", halfOpen, limit.Cur, err)
	}

	port := chattest.FreePort(t)
	cfg := filepath.Join(t.TempDir(), "chat.yaml")
	yaml := fmt.Sprintf("Name: chat\nHost: 127.0.0.1\nPort: %d\nLog:\n  Level: severe\nChat:\n  ReadHeaderTimeout: %s\n  IdleTimeout: %s\n",
		port, readHeaderTimeout, readHeaderTimeout)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildBinary(t), "-f", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitStatus(t, "http://"+addr+"/readyz", http.StatusOK)
	http.DefaultClient.CloseIdleConnections() // its keep-alive connection is not part of the baseline

	fdDir := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
	descriptors := func() int {
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			return -1
		}
		return len(fds)
	}
	if descriptors() < 0 {
		t.Skipf("cannot count the binary's descriptors in %s", fdDir)
	}
	base := settledDescriptors(descriptors)

	// The peak is sampled while the sockets open: the first ones may be
	// cut before the last is accepted on a slow machine.
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := int64(descriptors()); n > peak.Load() {
				peak.Store(n)
			}
			if peak.Load() >= int64(base+halfOpen) {
				return
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	conns, err := openHalfRequests(addr, halfOpen)
	opened := time.Now()
	deadline := opened.Add(readHeaderTimeout + after)
	if err != nil {
		for _, c := range conns {
			_ = c.Close()
		}
		close(stopSampling)
		t.Fatalf("after %d sockets: %v", len(conns), err)
	}

	// Each client waits for the server to close its socket, and closes its
	// own end at once.
	var (
		wg       sync.WaitGroup
		open     atomic.Int64
		lastEOF  atomic.Int64 // Unix nanoseconds of the last close by the server
		firstErr sync.Once
		notCut   error
	)
	for _, c := range conns {
		wg.Go(func() {
			defer c.Close()
			_ = c.SetReadDeadline(deadline)
			var err error
			for buf := make([]byte, 512); err == nil; {
				_, err = c.Read(buf)
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				open.Add(1)
				firstErr.Do(func() { notCut = err })
				return
			}
			// EOF or a reset: the server closed it.
			for now := time.Now().UnixNano(); ; {
				last := lastEOF.Load()
				if now <= last || lastEOF.CompareAndSwap(last, now) {
					break
				}
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	if p := int(peak.Load()); p < base+halfOpen*9/10 {
		t.Fatalf("the binary held at most %d descriptors with %d half-open sockets, %d before them: the sockets were not all open at once",
			p, halfOpen, base)
	}
	if n := open.Load(); n > 0 {
		t.Fatalf("%d of %d half-open sockets still open %v after the last one was opened (ReadHeaderTimeout %v): %v",
			n, halfOpen, time.Since(opened).Round(time.Millisecond), readHeaderTimeout, notCut)
	}
	cut := time.Unix(0, lastEOF.Load()).Sub(opened)

	for descriptors() > base+slack {
		if time.Now().After(deadline) {
			t.Fatalf("the binary holds %d descriptors %v after the last half-open socket was opened, %d before them (peak %d)",
				descriptors(), time.Since(opened).Round(time.Millisecond), base, peak.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	released := time.Since(opened)
	t.Logf("binary descriptors: %d before, %d with %d half-open sockets, %d after; all cut %v and descriptors back %v after the last was opened (ReadHeaderTimeout %v)",
		base, peak.Load(), halfOpen, descriptors(), cut.Round(time.Millisecond), released.Round(time.Millisecond), readHeaderTimeout)

	// The server still serves.
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}).Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("after the half-open sockets: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after the half-open sockets: /healthz answered %d", resp.StatusCode)
	}
}

// openHalfRequests opens n connections to addr, a few at a time, and sends
// on each the first lines of a request header that never ends. It returns
// the connections opened so far along with an error.
func openHalfRequests(addr string, n int) ([]net.Conn, error) {
	const dialers = 16
	conns := make([]net.Conn, n)
	errs := make([]error, dialers)
	var wg sync.WaitGroup
	for w := range dialers {
		wg.Go(func() {
			d := net.Dialer{Timeout: 5 * time.Second}
			for i := w; i < n; i += dialers {
				c, err := d.Dial("tcp", addr)
				if err == nil {
					_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					_, err = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
					conns[i] = c
				}
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	opened := conns[:0]
	for _, c := range conns {
		if c != nil {
			opened = append(opened, c)
		}
	}
	return opened, errors.Join(errs...)
}

// settledDescriptors counts until two counts a moment apart agree (a
// connection closed just before may still be going), for at most 3 s.
func settledDescriptors(count func() int) int {
	prev := count()
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		n := count()
		if n == prev {
			return n
		}
		prev = n
	}
	return prev
}

package server_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
)

// tcpEntry is a socket as /proc/net/tcp lists it.
type tcpEntry struct {
	state   int // 1 ESTABLISHED, 4 FIN-WAIT-1, 7 CLOSE, ...
	txQueue int // bytes written and not yet acknowledged by the peer
}

// serverSocket finds the server's end of the loopback connection from
// clientPort to serverPort; ok is false when the kernel no longer has it.
func serverSocket(t *testing.T, serverPort, clientPort int) (tcpEntry, bool) {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	defer f.Close()
	local := fmt.Sprintf(":%04X", serverPort)
	remote := fmt.Sprintf(":%04X", clientPort)
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || !strings.HasSuffix(fields[1], local) || !strings.HasSuffix(fields[2], remote) {
			continue
		}
		state, _ := strconv.ParseInt(fields[3], 16, 32)
		tx, _ := strconv.ParseInt(strings.Split(fields[4], ":")[0], 16, 64)
		return tcpEntry{state: int(state), txQueue: int(tx)}, true
	}
	return tcpEntry{}, false
}

// A client that never reads while its room is flooded: it is a slow
// consumer, the kernel holds no more than the bounded send buffer for it
// meanwhile (not the megabytes of the kernel's autotuning), and since the
// close frame cannot reach it, its socket is reset rather than left to hold
// that data in FIN-WAIT-1 (SPEC §11).
func TestStalledReaderIsResetAndPinsOnlyItsSendBuffer(t *testing.T) {
	const sendBuffer = 64 << 10
	s := chattest.Start(t, fast, func(c *config.Config) {
		c.Chat.SendBufferBytes = sendBuffer
		c.Chat.MaxText = 16000
	})
	stalled := rawDial(t, s, "stalled")
	if err := stalled.WriteJSON(map[string]any{"type": "join", "room": "r"}); err != nil {
		t.Fatal(err)
	}
	sender := s.DialName(t, "sender")
	sender.Join("r")
	serverPort := s.Config.Port
	clientPort := stalled.LocalAddr().(*net.TCPAddr).Port

	// Flood until the stalled client is a slow consumer; the kernel's share
	// is checked all along. Linux doubles SO_SNDBUF for its own overhead,
	// and may go over by the segment it is building: three times the
	// request is more than it may hold (without the bound: megabytes).
	text := strings.Repeat("x", 15000)
	maxTx := 0
	for i := 0; s.Node.Stats().SlowConsumers == 0; i++ {
		if i == 2000 {
			t.Fatal("no slow consumer after 2000 messages of 15 KB")
		}
		sender.Say("r", text)
		if e, ok := serverSocket(t, serverPort, clientPort); ok {
			maxTx = max(maxTx, e.txQueue)
		}
	}
	t.Logf("the kernel held at most %d bytes for the stalled reader", maxTx)
	if maxTx > 3*sendBuffer {
		t.Fatalf("the kernel held %d bytes for the stalled reader, over three times the %d-byte send buffer", maxTx, sendBuffer)
	}

	// The close frame cannot reach it within 10 s: the socket is reset, so
	// the server's end is gone, not lingering in FIN-WAIT-1. (The bound is
	// generous: what matters is that it goes.)
	deadline := time.Now().Add(40 * time.Second)
	for {
		e, ok := serverSocket(t, serverPort, clientPort)
		if !ok || e.state == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server's socket is still in state %d holding %d bytes 40 s after the slow-consumer close", e.state, e.txQueue)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The client finds the connection reset, not closed in order.
	_ = stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := stalled.ReadMessage(); err != nil {
			if strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "close 4008") {
				return
			}
			t.Fatalf("stalled client ended with %v, want a reset (or 4008 if the frame got through)", err)
		}
	}
}

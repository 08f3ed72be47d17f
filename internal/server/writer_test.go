package server_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/gorilla/websocket"
)

// dialRaw connects without chattest's reader, so the test owns every read.
func dialRaw(t *testing.T, s *chattest.Server, name string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(s.WSURL+"?name="+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	_ = ws.SetReadDeadline(time.Now().Add(chattest.Timeout))
	if _, data, err := ws.ReadMessage(); err != nil || !strings.Contains(string(data), `"welcome"`) {
		t.Fatalf("welcome: %q, %v", data, err)
	}
	return ws
}

// The server's writer answers a client's ping (gorilla's own handler would
// write from the read pump, beside the writer).
func TestClientPingIsAnsweredWithItsPayload(t *testing.T) {
	s := chattest.Start(t)
	ws := dialRaw(t, s, "pinger")
	pongs := make(chan string, 1)
	ws.SetPongHandler(func(data string) error { pongs <- data; return nil })
	if err := ws.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"rooms","id":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, data, err := ws.ReadMessage(); err != nil || !strings.Contains(string(data), `"reply"`) {
		t.Fatalf("reply: %q, %v", data, err)
	}
	select {
	case got := <-pongs:
		if got != "hello" {
			t.Fatalf("pong %q, want %q", got, "hello")
		}
	default:
		t.Fatal("no pong before the reply to the command sent after the ping")
	}
}

func TestClientCloseIsEchoedWithItsCode(t *testing.T) {
	s := chattest.Start(t)
	ws := dialRaw(t, s, "closer")
	if err := ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	_, _, err := ws.ReadMessage()
	if !websocket.IsCloseError(err, 4000) {
		t.Fatalf("read after close: %v, want the close echoed with 4000", err)
	}
}

// A member that stops reading for longer than the socket buffers can hold
// is written by a goroutine of its own until it catches up; it must then
// have every message once, in order, and get the next ones as before.
func TestReaderThatLagsGetsEverythingInOrder(t *testing.T) {
	const n, size = 3000, 3900 // about 12 MB of events: more than loopback's socket buffers
	s := chattest.Start(t, func(c *config.Config) {
		c.Chat.MaxQueueBytes = 64 << 20
		c.Chat.MaxText = 4000
		c.Chat.RateLimit, c.Chat.RateBurst = 100000, 100000
	})
	lag := dialRaw(t, s, "lagger")
	if err := lag.WriteMessage(websocket.TextMessage, []byte(`{"type":"join","room":"lag","id":"j"}`)); err != nil {
		t.Fatal(err)
	}
	// The reply comes before any message: the room is empty, so every
	// message after it is an event, from seq 1.
	if _, data, err := lag.ReadMessage(); err != nil || !strings.Contains(string(data), `"type":"reply"`) {
		t.Fatalf("join reply: %q, %v", data, err)
	}
	sender := s.DialName(t, "sender")
	sender.Join("lag")
	text := strings.Repeat("x", size)
	for i := range n {
		sender.Say("lag", fmt.Sprintf("%05d%s", i, text[5:]))
	}
	sender.Say("lag", "last")

	next := int64(1)
	deadline := time.Now().Add(chattest.Timeout)
	for next <= n+1 {
		_ = lag.SetReadDeadline(deadline)
		_, data, err := lag.ReadMessage()
		if err != nil {
			t.Fatalf("after seq %d: %v", next-1, err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, `"type":"message"`) {
				if want := fmt.Sprintf(`"seq":%d,`, next); !strings.Contains(line, want) {
					t.Fatalf("message %.80s..., want %s", line, want)
				}
				next++
			}
		}
	}
	// Caught up: the connection is back with the flushers and still served.
	sender.Say("lag", "after")
	_ = lag.SetReadDeadline(time.Now().Add(chattest.Timeout))
	if _, data, err := lag.ReadMessage(); err != nil || !strings.Contains(string(data), `"text":"after"`) {
		t.Fatalf("after catching up: %q, %v", data, err)
	}
}

// The upgrade's response is held and sent with the welcome: one system
// call on the server, one read on the client.
func TestHandshakeResponseAndWelcomeArriveTogether(t *testing.T) {
	s := chattest.Start(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET /ws?name=together HTTP/1.1\r\nHost: " + strings.TrimPrefix(s.URL, "http://") + "\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(chattest.Timeout))
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	head, frame, ok := strings.Cut(string(buf[:n]), "\r\n\r\n")
	if !ok || !strings.HasPrefix(head, "HTTP/1.1 101 ") ||
		!strings.Contains(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
		t.Fatalf("first read: %q, want the 101 response with the key's accept value", buf[:n])
	}
	if len(frame) < 2 || frame[0] != 0x81 || !strings.Contains(frame, `"type":"welcome"`) {
		t.Fatalf("after the response, in the same read: %q, want the welcome's text frame", frame)
	}
}

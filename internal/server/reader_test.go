package server_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"chat/internal/chat"
	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/gorilla/websocket"
)

// maskedFrame is a client frame as RFC 6455 §5.2 lays it out: FIN, the
// opcode, the mask bit and length, the mask key, the masked payload.
func maskedFrame(opcode byte, payload string) []byte {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	f := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n <= 125:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	}
	f = append(f, key[:]...)
	for i := 0; i < len(payload); i++ {
		f = append(f, payload[i]^key[i%4])
	}
	return f
}

// writeRaw writes frames in one system call, so that they arrive together.
func writeRaw(t *testing.T, c *chattest.Client, frames ...[]byte) {
	t.Helper()
	if _, err := c.WS.NetConn().Write(bytes.Join(frames, nil)); err != nil {
		t.Fatal(err)
	}
}

func waitReply(c *chattest.Client, id string) chattest.Event {
	return c.WaitFor("reply", func(e chattest.Event) bool { return e.Str("id") == id })
}

func TestFramesThatArriveTogetherAreAllRead(t *testing.T) {
	s := chattest.Start(t)
	c := s.DialName(t, "together")
	long := `{"type":"members","room":"r","id":"long","pad":"` + strings.Repeat("x", 3000) + `"}`
	writeRaw(t, c,
		maskedFrame(websocket.TextMessage, `{"type":"join","room":"r","id":"1"}`),
		maskedFrame(websocket.PongMessage, "p"),
		maskedFrame(websocket.PingMessage, "hello"),
		maskedFrame(websocket.TextMessage, `{"type":"rooms","id":"2"}`),
		maskedFrame(websocket.PongMessage, ""),
		maskedFrame(websocket.TextMessage, long), // larger than the read buffer
		maskedFrame(websocket.TextMessage, `{"type":"send","room":"r","text":"hi","id":"3"}`),
	)
	for _, id := range []string{"1", "2", "long", "3"} {
		if e := waitReply(c, id); e.Field("error") != nil {
			t.Fatalf("reply %s: %s", id, e)
		}
	}
	// Frames that arrive one by one, after the connection went idle, and a
	// frame split across two writes.
	time.Sleep(50 * time.Millisecond)
	writeRaw(t, c, maskedFrame(websocket.PongMessage, "idle"))
	time.Sleep(50 * time.Millisecond)
	frame := maskedFrame(websocket.TextMessage, `{"type":"rooms","id":"4"}`)
	writeRaw(t, c, frame[:5])
	time.Sleep(50 * time.Millisecond)
	writeRaw(t, c, frame[5:])
	waitReply(c, "4")
}

func TestUnmaskedPongIsAProtocolError(t *testing.T) {
	s := chattest.Start(t)
	c := s.DialName(t, "unmasked")
	writeRaw(t, c, []byte{0x80 | websocket.PongMessage, 0}) // no mask bit
	select {
	case <-c.Done():
	case <-time.After(chattest.Timeout):
		t.Fatal("connection still open")
	}
	if code := c.CloseCode(); code != websocket.CloseProtocolError {
		t.Fatalf("close code %d, want %d", code, websocket.CloseProtocolError)
	}
}

// An idle connection, even one that has run commands and answers pings
// (pongs alone or behind a command), waits for its next frame in await, a goroutine that has run nothing
// else, not in a read pump goroutine whose stack grew with its commands.
func TestIdleConnectionsWaitInAwait(t *testing.T) {
	waitConnGoroutinesGone(t) // the connections of earlier tests, which the count below would see
	s := chattest.Start(t, func(c *config.Config) {
		c.Chat.PingInterval = 20 * time.Millisecond
		c.Chat.PongTimeout = 2 * time.Second
	})
	const n = 20
	for i := range n {
		c := s.DialName(t, "idle-"+chattest.Itoa(i))
		c.Join("idle")
		c.Say("idle", "hello")
		// A pong that arrives with a command is consumed after it.
		writeRaw(t, c, maskedFrame(websocket.TextMessage, `{"type":"rooms","id":"p"}`), maskedFrame(websocket.PongMessage, "x"))
		waitReply(c, "p")
	}
	time.Sleep(200 * time.Millisecond) // several pings, answered by each client
	waiting := chattest.ConnGoroutines(t, chat.LabelWaiting)
	reading := chattest.ConnGoroutines(t, chat.LabelReading)
	if waiting < n || reading != 0 {
		t.Fatalf("%d readers wait in a fresh goroutine and %d in one that ran commands; want at least %d and 0", waiting, reading, n)
	}
}

// connGoroutines counts the goroutines running a connection's code.
func connGoroutines(t *testing.T) int {
	t.Helper()
	return chattest.ConnGoroutines(t, chat.LabelWaiting, chat.LabelReading, chat.LabelWriting)
}

// Readers, writers and pingers end with their connections: those the
// clients close, and those the server closes when it stops.
func TestConnectionGoroutinesEndWithTheirConnections(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) {
		c.Chat.PingInterval = 20 * time.Millisecond
	})
	var clients []*chattest.Client
	for i := range 10 {
		c := s.DialName(t, "leak-"+chattest.Itoa(i))
		c.Join("leak")
		clients = append(clients, c)
	}
	for i := range 50 { // writers busy in consecutive windows when the closes come
		clients[i%10].Say("leak", "hello")
	}
	for _, c := range clients[:5] {
		_ = c.WS.Close()
	}
	s.Stop()
	waitConnGoroutinesGone(t)
}

// waitConnGoroutinesGone waits until no goroutine runs a connection's code.
func waitConnGoroutinesGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(chattest.Timeout)
	for n := connGoroutines(t); n != 0; n = connGoroutines(t) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of closed connections still run", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package wsraw

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// These tests pin what the package assumes of gorilla/websocket beyond its
// documentation (see the package comment). When one fails after an
// upgrade of gorilla, the WebSocket transport is wrong in the way the
// test's name says: do not loosen the test, rework the assumption.

// upgradeRaw upgrades a connection whose client is a plain socket, so that
// the test writes raw frames. It returns the server's Socket and the
// client's socket with the handshake's response read.
func upgradeRaw(t *testing.T) (*Socket, net.Conn) {
	t.Helper()
	sockets := make(chan *Socket, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sock, err := Upgrade(&websocket.Upgrader{}, w, r)
		if err != nil {
			t.Error(err)
			close(sockets)
			return
		}
		sockets <- sock
	}))
	t.Cleanup(srv.Close)
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	sock := <-sockets
	if sock == nil {
		t.FailNow()
	}
	t.Cleanup(func() { _ = sock.WS.Close() })
	return sock, conn
}

// masked is a client frame: FIN, opcode op, masked with a zero key.
func masked(op byte, payload []byte) []byte {
	frame := []byte{0x80 | op, 0x80 | byte(len(payload)), 0, 0, 0, 0}
	return append(frame, payload...)
}

// Upgrade writes the whole "101" response in its first write, and nothing
// else: Socket.Handshake holds it, and the client has received nothing.
func TestUpgradeWritesTheHandshakeResponseInOneWrite(t *testing.T) {
	sock, conn := upgradeRaw(t)
	h := string(sock.Handshake)
	if !strings.HasPrefix(h, "HTTP/1.1 101 ") || !strings.HasSuffix(h, "\r\n\r\n") ||
		!strings.Contains(h, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
		t.Fatalf("the held write is not the whole handshake response: %q", h)
	}
	_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var b [1]byte
	if n, err := conn.Read(b[:]); n > 0 || !errors.Is(err, errTimeout(err)) {
		t.Fatalf("the client received %d bytes before the handshake was sent (err %v)", n, err)
	}
	if sock.GorillaWroteClose() {
		t.Fatal("a write after the handshake was counted as gorilla's close")
	}
}

// errTimeout returns err when it is a timeout, so that errors.Is matches it.
func errTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

// Gorilla reads frames through the hijacked reader (Socket.Reader): what
// the server peeks there is what gorilla then reads, and once it has read
// the message the reader is empty. Were gorilla reading through a buffer
// of its own, the peeked bytes would be lost to it.
func TestGorillaReadsThroughTheHijackedReader(t *testing.T) {
	sock, conn := upgradeRaw(t)
	if _, err := conn.Write(append(masked(0x1, []byte("hello")), masked(0xA, nil)...)); err != nil {
		t.Fatal(err)
	}
	if _, err := sock.Reader.Peek(2 + 4 + 5 + 6); err != nil {
		t.Fatal(err)
	}
	_ = sock.WS.SetReadDeadline(time.Now().Add(5 * time.Second))
	kind, data, err := sock.WS.ReadMessage()
	if err != nil || kind != websocket.TextMessage || string(data) != "hello" {
		t.Fatalf("gorilla read %d %q %v, want the text frame the reader held", kind, data, err)
	}
	if got := NextControl(sock.Reader, false); got != PeekedPong {
		t.Fatalf("after the message the reader holds %v, want the pong whole", got)
	}
	if sock.Reader.Buffered() != 0 {
		t.Fatalf("%d bytes left in the reader", sock.Reader.Buffered())
	}
}

// A frame gorilla fails while reading (here a reserved bit) makes it write
// its close frame to the socket: the only write it makes after the
// handshake, which GorillaWroteClose reports.
func TestGorillaWritesItsCloseOnAProtocolError(t *testing.T) {
	sock, conn := upgradeRaw(t)
	frame := masked(0x1, []byte("x"))
	frame[0] |= 0x40 // RSV1 without an extension
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = sock.WS.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := sock.WS.ReadMessage(); err == nil {
		t.Fatal("gorilla accepted a reserved bit")
	}
	if !sock.GorillaWroteClose() {
		t.Fatal("gorilla did not write a close frame for a protocol error")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := conn.Read(got); err != nil || got[0] != 0x88 || !bytes.Equal(got[2:4], []byte{0x03, 0xEA}) {
		t.Fatalf("the client read % x (%v), want a close frame with 1002", got, err)
	}
}

// A 64-bit length with its top bit set fails with ErrReadLimit and, unlike
// a frame over the limit, without a close frame: the transport sends 1002
// itself when GorillaWroteClose is false.
func TestGorillaFailsATopBitLengthWithoutAClose(t *testing.T) {
	sock, conn := upgradeRaw(t)
	sock.WS.SetReadLimit(1 << 20)
	frame := []byte{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = sock.WS.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := sock.WS.ReadMessage()
	if !errors.Is(err, websocket.ErrReadLimit) {
		t.Fatalf("err %v, want ErrReadLimit", err)
	}
	if sock.GorillaWroteClose() {
		t.Fatal("gorilla now answers a top-bit length with a close frame: the transport's own 1002 would be a second close")
	}
}

// A frame over the read limit fails with ErrReadLimit and gorilla's close 1009.
func TestGorillaClosesAFrameOverTheLimitWith1009(t *testing.T) {
	sock, conn := upgradeRaw(t)
	sock.WS.SetReadLimit(4)
	if _, err := conn.Write(masked(0x1, []byte("too long"))); err != nil {
		t.Fatal(err)
	}
	_ = sock.WS.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := sock.WS.ReadMessage(); !errors.Is(err, websocket.ErrReadLimit) {
		t.Fatalf("err %v, want ErrReadLimit", err)
	}
	if !sock.GorillaWroteClose() {
		t.Fatal("gorilla did not write its close for a frame over the limit")
	}
}

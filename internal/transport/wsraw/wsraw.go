// Package wsraw is the WebSocket code that goes below gorilla/websocket:
// everything the WebSocket transport does to a socket that gorilla's API
// does not offer. It is kept in one place, behind a narrow API, because it
// rests on how gorilla/websocket v1.5 behaves rather than on what it
// documents, and the tests beside it (gorilla_test.go) fail loudly when an
// upgrade of gorilla changes one of these assumptions:
//
//   - Upgrade reads through the hijacked bufio.Reader when the Upgrader's
//     ReadBufferSize is 0 and the reader holds more than 256 bytes, so the
//     connection keeps hold of gorilla's read buffer (Socket.Reader) and
//     can tell when everything that arrived is read.
//   - Upgrade writes the "101 Switching Protocols" response in one Write
//     to the hijacked connection and writes nothing else to it until it
//     fails a frame while reading, when it writes its close frame there.
//   - Frames the server writes itself (AppendFrames) straight to the
//     socket are read by a gorilla client like gorilla's own.
package wsraw

import (
	"bufio"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"

	"github.com/gorilla/websocket"
)

// ReadBufferSize holds a frame header and a control frame (RFC 6455 §5.5:
// at most 125 bytes of payload) whole. It is the size class just above the
// 256 bytes gorilla needs before it reads through a hijacked reader; larger
// frames are read through it in pieces, or past it into the message.
const ReadBufferSize = 288

// Socket is an upgraded WebSocket and the socket beneath it.
type Socket struct {
	WS     *websocket.Conn
	Reader *bufio.Reader   // gorilla's read buffer: what has arrived and is not read yet
	Conn   net.Conn        // the socket; the server's own writes go here
	TCP    *net.TCPConn    // the socket, for its options; nil: none (TLS)
	Raw    syscall.RawConn // the socket, for writes that must not block; nil: none (TLS)

	held *heldConn
	// Handshake is the upgrade's "101" response, which gorilla wrote but
	// the socket held back: the first write sends it ahead of the first
	// frames, in one system call, where gorilla and then the server would
	// make two (and the client two reads).
	Handshake []byte
}

// Upgrade upgrades the request with u, whose ReadBufferSize must be 0 (the
// socket supplies gorilla's read buffer). On failure u has answered.
func Upgrade(u *websocket.Upgrader, w http.ResponseWriter, r *http.Request) (*Socket, error) {
	s := new(Socket)
	return s, UpgradeInto(s, u, w, r)
}

// UpgradeInto is Upgrade filling s, which the caller may hold inside its
// own connection object: one allocation less per connection.
func UpgradeInto(s *Socket, u *websocket.Upgrader, w http.ResponseWriter, r *http.Request) error {
	h := hijacker{ResponseWriter: w}
	ws, err := u.Upgrade(&h, r, nil)
	if err != nil {
		return err
	}
	*s = Socket{WS: ws, Reader: h.br, Conn: h.conn.Conn, held: h.conn, Handshake: h.conn.take()}
	s.TCP, _ = h.conn.Conn.(*net.TCPConn)
	s.Raw = rawConn(h.conn.Conn)
	return nil
}

// GorillaWroteClose reports whether gorilla wrote to the socket after the
// handshake: the close frame it sends when it fails a frame while reading.
func (s *Socket) GorillaWroteClose() bool { return s.held.wroteClose.Load() }

// SetSendBuffer bounds the kernel's send buffer (SO_SNDBUF; Linux doubles it).
func (s *Socket) SetSendBuffer(bytes int) {
	if s.TCP != nil && bytes > 0 {
		_ = s.TCP.SetWriteBuffer(bytes)
	}
}

// Reset makes the next close of the socket a reset (SO_LINGER 0): nothing
// written and unsent outlives it.
func (s *Socket) Reset() {
	if s.TCP != nil {
		_ = s.TCP.SetLinger(0)
	}
}

// Unacked reports how many bytes written to the socket the peer has not
// acknowledged yet (SIOCOUTQ), and whether the kernel could tell (not
// over TLS, and only on Linux).
func (s *Socket) Unacked() (int, bool) { return unacked(s.Raw) }

// rawConn is the socket under conn, for writes that must not block; nil
// when conn is not a plain socket (TLS).
func rawConn(conn net.Conn) syscall.RawConn {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// hijacker gives gorilla a read buffer that the connection keeps a hold
// of, and a socket that holds the handshake's response (heldConn).
type hijacker struct {
	http.ResponseWriter
	br   *bufio.Reader
	conn *heldConn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		return conn, brw, err // gorilla refuses a client that sent data before the handshake's end
	}
	h.br = bufio.NewReaderSize(conn, ReadBufferSize)
	h.conn = &heldConn{Conn: conn, holding: true}
	return h.conn, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// heldConn keeps the first write, gorilla's "101 Switching Protocols",
// instead of sending it (Socket.Handshake). Later writes go straight
// through; the first happens in Upgrade, before the connection has other
// goroutines. The server writes to the socket underneath, so every later
// write here is gorilla's own: the close frame it sends when it finds a
// protocol error while reading (wroteClose).
type heldConn struct {
	net.Conn
	holding    bool
	held       []byte
	wroteClose atomic.Bool
}

// take hands over the held response.
func (c *heldConn) take() []byte {
	held := c.held
	c.held = nil
	return held
}

func (c *heldConn) Write(p []byte) (int, error) {
	if c.holding {
		c.holding, c.held = false, append([]byte(nil), p...)
		return len(p), nil
	}
	c.wroteClose.Store(true)
	return c.Conn.Write(p)
}

package chat

import (
	"bufio"
	"context"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"

	"github.com/gorilla/websocket"
	"github.com/zeromicro/go-zero/rest/httpx"
)

type userKey struct{}

// WithUser records the user that token auth established for a request.
func WithUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

func userFrom(ctx context.Context) (string, bool) {
	user, ok := ctx.Value(userKey{}).(string)
	return user, ok
}

// readBufferSize holds a frame header and a control frame (RFC 6455 §5.5:
// at most 125 bytes of payload) whole. It is the size class just above the
// 256 bytes gorilla needs before it reads through a hijacked reader; larger
// frames are read through it in pieces, or past it into the message.
const readBufferSize = 288

// upgrader keeps idle connections cheap: a small read buffer (handed over
// by readerHijacker, hence ReadBufferSize 0), and write buffers shared
// through a pool, held only while a frame is written.
var upgrader = websocket.Upgrader{
	WriteBufferSize: 4096,
	WriteBufferPool: &sync.Pool{},
	CheckOrigin:     func(*http.Request) bool { return true }, // ServeWS checks it before the upgrade
	Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
		WriteError(w, r, status, protocol.CodeBadRequest, reason.Error())
	},
}

// WriteError answers a refused request with the JSON error body of the REST API.
func WriteError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	httpx.WriteJsonCtx(r.Context(), w, status, protocol.Error{Code: code, Message: message})
}

// ServeWS admits a WebSocket connection: it checks the node's state, the
// origin, the name and the connection cap before the upgrade, then starts
// the connection's pumps and returns at once (SPEC §10: a handler that
// stays in the request holds go-zero's MaxConns slot and its timeouts).
func (n *Node) ServeWS(w http.ResponseWriter, r *http.Request) {
	if n.draining.Load() {
		WriteError(w, r, http.StatusServiceUnavailable, protocol.CodeUnavailable, "server shutting down")
		return
	}
	if !n.originAllowed(r) {
		WriteError(w, r, http.StatusForbidden, protocol.CodeForbidden, "origin not allowed")
		return
	}
	user, authed := userFrom(r.Context())
	if !authed {
		name := r.URL.Query().Get("name")
		if strings.TrimSpace(name) == "" {
			user = "guest-" + NewNodeID()[:8]
		} else {
			var err error
			if user, err = protocol.NormalizeName(name); err != nil {
				WriteError(w, r, http.StatusBadRequest, protocol.CodeBadRequest, protocol.AsError(err).Message)
				return
			}
		}
	}
	if refusal := n.admit(user); refusal != "" {
		WriteError(w, r, http.StatusServiceUnavailable, protocol.CodeUnavailable, refusal)
		return
	}
	hijacker := &readerHijacker{ResponseWriter: w}
	ws, err := upgrader.Upgrade(hijacker, r, nil)
	if err != nil {
		n.release(user)
		return // the upgrader answered
	}
	// A bounded send buffer makes Chat.MaxQueueBytes the real bound on
	// what a reader that stalls can pin: the kernel's autotuning would let
	// it hold megabytes more (SPEC §11).
	tcp, _ := hijacker.conn.Conn.(*net.TCPConn)
	if tcp != nil && n.cfg.SendBufferBytes > 0 {
		_ = tcp.SetWriteBuffer(n.cfg.SendBufferBytes)
	}
	seq := n.nextID.Add(1)
	id := n.idFor(seq)
	c := &Conn{
		node:      n,
		ws:        ws,
		br:        hijacker.br,
		client:    hub.NewClient(id, user, n.cfg.MaxQueueBytes),
		presence:  broker.Conn{Client: id, User: user, Node: n.ID},
		limiter:   newTokenBucket(n.cfg.RateLimit, n.cfg.RateBurst),
		readDone:  make(chan struct{}),
		writeDone: make(chan struct{}),
		flusher:   n.flushers[seq%uint64(len(n.flushers))],
		held:      hijacker.conn,
		tcp:       tcp,
		raw:       rawConn(hijacker.conn.Conn),
		handshake: hijacker.conn.take(),
		timedAt:   -1,
		lastWrite: math.MinInt64 / 2, // long ago: the first write goes out at once
	}
	n.mu.Lock()
	n.conns[c] = struct{}{}
	n.mu.Unlock()
	n.wg.Add(1)
	c.pinger = time.AfterFunc(n.cfg.PingInterval, c.ping)
	go c.readPump() // it hands the connection to the flushers once the welcome is queued
}

// admit counts a connection of user against Chat.MaxConnections and
// Chat.MaxUserConnections (0: no cap per user), or says why it is refused;
// release gives the place back.
func (n *Node) admit(user string) (refusal string) {
	if n.admitted.Add(1) > int64(n.cfg.MaxConnections) {
		n.admitted.Add(-1)
		return "too many connections"
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if limit := n.cfg.MaxUserConnections; limit > 0 && n.userConns[user] >= limit {
		n.admitted.Add(-1)
		return "too many connections for this user"
	}
	n.userConns[user]++
	return ""
}

func (n *Node) release(user string) {
	n.mu.Lock()
	if n.userConns[user]--; n.userConns[user] <= 0 {
		delete(n.userConns, user)
	}
	n.mu.Unlock()
	n.admitted.Add(-1)
}

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

// readerHijacker gives gorilla a read buffer that the connection keeps a
// hold of, so that its read pump can tell when everything that has arrived
// is read (see await). Gorilla reads through the hijacked reader when
// ReadBufferSize is 0 and the reader holds more than 256 bytes. It also
// gives gorilla a socket that holds the handshake's response (heldConn).
type readerHijacker struct {
	http.ResponseWriter
	br   *bufio.Reader
	conn *heldConn
}

func (h *readerHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		return conn, brw, err // gorilla refuses a client that sent data before the handshake's end
	}
	h.br = bufio.NewReaderSize(conn, readBufferSize)
	h.conn = &heldConn{Conn: conn, holding: true}
	return h.conn, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// heldConn keeps the first write, gorilla's "101 Switching Protocols",
// instead of sending it: the connection's writer sends it ahead of the
// welcome, in one system call, where gorilla and then the writer would
// make two (and the client two reads). Later writes go straight through;
// the first happens in Upgrade, before the connection has other goroutines.
//
// Our writers write to the socket underneath, so every later write here is
// gorilla's own: the close frame it sends when it finds a protocol error
// while reading (wroteClose).
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

// originAllowed: no Origin (not a browser), the page's own host, or one of
// Chat.AllowedOrigins ("*": any).
func (n *Node) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, allowed := range n.cfg.AllowedOrigins {
		if allowed == "*" || strings.EqualFold(strings.TrimSuffix(allowed, "/"), origin) {
			return true
		}
	}
	return false
}

// Package sse is the Server-Sent Events transport (SPEC §12): for networks
// that block WebSockets, a session's events go down a text/event-stream
// response and its commands come up as HTTP POSTs, which chat.Node takes
// on any replica (Node.PostCommands). The session is the same as a
// WebSocket's; only the carrying differs.
//
// Over HTTP/1.1 the stream takes the connection over (Hijack), as a
// WebSocket does, and the handler returns at once: the stream then holds
// no go-zero MaxConns slot and no request in flight, its goroutine starts
// with a small stack instead of the one the middleware chain grew, and its
// socket gets the WebSocket's bounded send buffer and reset (SPEC §11).
// The response is written by the service itself: the headers go-zero and
// the service set (content type, security headers), then the events, the
// body ending when the connection closes (RFC 9112 §6.3). Over HTTP/2,
// which cannot be hijacked, the stream stays in its request and writes
// through net/http.
package sse

import (
	"bytes"
	"net"
	"net/http"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/hub"
	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/core/logx"
)

// writeWait bounds one write to the stream; a reader that takes longer is gone.
const writeWait = 10 * time.Second

var labelsStream = chat.Labels(chat.LabelStream)

// Transport carries a node's sessions over SSE.
type Transport struct {
	node *chat.Node
	cfg  config.ChatConf
}

// New makes the node's SSE transport.
func New(node *chat.Node) *Transport {
	return &Transport{node: node, cfg: node.Config()}
}

// ServeSSE admits a session (every check of /ws, with the same refusals:
// Node.Admit) and streams it until the session or the client ends.
func (t *Transport) ServeSSE(w http.ResponseWriter, r *http.Request) {
	who, ok := t.node.Admit(w, r)
	if !ok {
		return
	}
	s := &stream{
		window:    t.cfg.CoalesceWindow,
		ping:      t.cfg.PingInterval,
		work:      make(chan struct{}, 1),
		aborted:   make(chan struct{}),
		lastWrite: time.Now().Add(-time.Hour),
	}
	// Proxies that buffer responses (nginx) would hold events back.
	w.Header().Set("X-Accel-Buffering", "no")
	conn, err := hijack(w)
	if err != nil { // HTTP/2: stream in the request
		s.out = &responseOut{w: w, rc: http.NewResponseController(w)}
		w.WriteHeader(http.StatusOK)
		s.session = t.node.Open(who, s, chat.SessionOptions{Commanded: true})
		pprof.SetGoroutineLabels(labelsStream)
		defer pprof.SetGoroutineLabels(r.Context()) // net/http reuses the goroutine
		s.serve(r.Context().Done())
		return
	}
	out := &connOut{conn: conn, tcp: tcpConn(conn), header: responseHead(w.Header()), gone: make(chan struct{})}
	if out.tcp != nil && t.cfg.SendBufferBytes > 0 {
		_ = out.tcp.SetWriteBuffer(t.cfg.SendBufferBytes)
	}
	s.out = out
	s.session = t.node.Open(who, s, chat.SessionOptions{Commanded: true})
	go out.watch()
	go s.start(out.gone)
}

// start starts the session, then leaves the streaming to a fresh
// goroutine: starting (the broker, the welcome) grows a goroutine's stack
// to several KiB, which it would keep for the session's life.
func (s *stream) start(gone <-chan struct{}) {
	s.begin()
	go func() {
		pprof.SetGoroutineLabels(labelsStream)
		s.stream(gone)
	}()
}

// hijack takes the connection over from net/http, or fails (HTTP/2).
func hijack(w http.ResponseWriter) (net.Conn, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, err
	}
	if brw.Reader.Buffered() > 0 { // a client that pipelined a request behind its GET
		_ = conn.Close()
		return nil, net.ErrClosed
	}
	return conn, nil
}

// responseHead is the response's status line and headers: those set so
// far (go-zero's event-stream headers, the security headers), and a body
// that ends when the connection closes.
func responseHead(h http.Header) []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\n")
	h = h.Clone()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "close")
	h.Del("Content-Length")
	h.Del("Transfer-Encoding")
	_ = h.Write(&b)
	b.WriteString("\r\n")
	return b.Bytes()
}

func tcpConn(conn net.Conn) *net.TCPConn {
	tcp, _ := conn.(*net.TCPConn)
	return tcp
}

// stream writes one session's outbox to the client. Its serve is the only
// writer of the response: events, the heartbeat and the close event.
type stream struct {
	session *chat.Session
	client  *hub.Client
	out     output
	window  time.Duration // Chat.CoalesceWindow, as for a WebSocket
	ping    time.Duration // Chat.PingInterval

	work    chan struct{} // capacity 1: Schedule or Hurry was called
	hurried atomic.Bool
	aborted chan struct{}
	abort   sync.Once

	lastWrite time.Time
}

// output is where a stream writes: a hijacked connection, or the request's
// response (HTTP/2).
type output interface {
	write(b []byte) error // all of b, within writeWait
	cut()                 // make a write in progress fail at once (the drain deadline)
	end(reset bool)       // the stream is over; reset: drop what the kernel holds
}

// serve starts the session and streams it, in the request (HTTP/2).
func (s *stream) serve(gone <-chan struct{}) {
	s.begin()
	s.stream(gone)
}

// begin makes the stream the writer of the session's outbox and starts
// the session; on failure the close event is queued.
func (s *stream) begin() {
	s.client = s.session.Outbox()
	s.client.SetWriter(s)
	s.session.Start()
}

// stream writes until the session ends (gone: the client went away), then
// ends it.
func (s *stream) stream(gone <-chan struct{}) {
	reset := s.run(gone)
	s.session.End()
	s.out.end(reset)
	s.session.Finish()
}

// Schedule is hub.Writer's: the outbox has something and the claim is ours.
func (s *stream) Schedule() { s.signal() }

// Hurry is hub.Writer's: write without waiting out the coalescing window.
func (s *stream) Hurry() {
	s.hurried.Store(true)
	s.signal()
}

func (s *stream) signal() {
	select {
	case s.work <- struct{}{}:
	default:
	}
}

// Abort is chat.Transport's: the drain deadline passed. A write in
// progress fails at once and the stream ends.
func (s *stream) Abort() {
	s.abort.Do(func() {
		close(s.aborted)
		s.out.cut()
	})
}

// heartbeat is a comment line: EventSource ignores it, and a proxy sees
// traffic on an idle stream.
var heartbeat = []byte(": ping\n\n")

// run writes until the session closes (its close event is the last), the
// client goes away, or a write fails. It reports whether the socket should
// be reset rather than closed: the client was not reading.
func (s *stream) run(gone <-chan struct{}) (reset bool) {
	ping := time.NewTicker(s.ping)
	defer ping.Stop()
	window := time.NewTimer(time.Hour)
	window.Stop()
	defer window.Stop()
	claimed, waiting := false, false
	for {
		select {
		case <-s.work:
			claimed = true
		case <-window.C:
			waiting = false
		case <-ping.C:
			if s.write(heartbeat) != nil {
				return true
			}
			continue
		case <-gone:
			return false
		case <-s.aborted:
			return true
		}
		for claimed && !waiting {
			if wait := s.window - time.Since(s.lastWrite); wait > 0 && !s.hurried.Load() {
				window.Reset(wait) // coalesce: more events may come meanwhile
				waiting = true
				break
			}
			more, reset := s.flush()
			if !more {
				return reset
			}
			claimed = !s.client.Idle()
		}
	}
}

// buffers assemble what a flush writes; a stream keeps none between writes.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBuffer is the largest buffer put back in the pool.
const maxPooledBuffer = 64 << 10

// flush writes everything queued as one SSE event, one JSON object per
// data: line (an EventSource joins them with "\n", so the client splits
// as it splits a WebSocket frame), and the close event when the session
// is closing, in one write. It reports whether the stream goes on, and
// when it does not whether to reset the socket.
func (s *stream) flush() (more, reset bool) {
	s.hurried.Store(false)
	b := s.client.Take()
	buf := buffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledBuffer {
			buf.Reset()
			buffers.Put(buf)
		}
	}()
	for _, event := range b.Events {
		appendData(buf, event)
	}
	if len(b.Events) > 0 {
		buf.WriteByte('\n')
	}
	clear(b.Events) // an idle session must not keep its last events alive
	closing := b.Close != nil && b.Close.Code != 0
	if closing {
		appendData(buf, protocol.MustEncode(protocol.Close{Type: "close", Code: b.Close.Code, Reason: b.Close.Text}))
		buf.WriteByte('\n')
	}
	if buf.Len() > 0 && s.write(buf.Bytes()) != nil {
		return false, true
	}
	if b.Close != nil {
		// A slow consumer is not reading: what the kernel still holds for
		// it goes with a reset, not a close that would keep it for minutes.
		return false, b.Close.Code == protocol.CloseSlowConsumer
	}
	return true, false
}

func appendData(buf *bytes.Buffer, event []byte) {
	buf.WriteString("data: ")
	buf.Write(event)
	buf.WriteByte('\n')
}

func (s *stream) write(b []byte) error {
	if err := s.out.write(b); err != nil {
		return err
	}
	s.lastWrite = time.Now()
	return nil
}

// connOut writes to a hijacked connection: the response's head first.
type connOut struct {
	conn   net.Conn
	tcp    *net.TCPConn // nil: not TCP (TLS)
	header []byte       // sent with the first write
	gone   chan struct{}
}

func (o *connOut) write(b []byte) error {
	_ = o.conn.SetWriteDeadline(time.Now().Add(writeWait))
	if o.header != nil {
		_, err := o.conn.Write(append(o.header, b...))
		o.header = nil
		return err
	}
	_, err := o.conn.Write(b)
	return err
}

func (o *connOut) cut() {
	if o.tcp != nil {
		_ = o.tcp.SetLinger(0)
	}
	_ = o.conn.SetWriteDeadline(time.Now())
}

func (o *connOut) end(reset bool) {
	if reset && o.tcp != nil {
		_ = o.tcp.SetLinger(0)
	}
	if err := o.conn.Close(); err != nil {
		logx.Debugf("sse: close: %v", err)
	}
}

// watch waits for the client to go away: an SSE client sends nothing, so
// a read ends only when the connection does (or the stream closed it).
func (o *connOut) watch() {
	pprof.SetGoroutineLabels(labelsStream)
	var b [64]byte // not io.Discard's pooled 8 KiB, held while the read waits
	for {
		if _, err := o.conn.Read(b[:]); err != nil {
			close(o.gone)
			return
		}
	}
}

// responseOut writes through net/http, in the request (HTTP/2).
type responseOut struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (o *responseOut) write(b []byte) error {
	_ = o.rc.SetWriteDeadline(time.Now().Add(writeWait))
	if _, err := o.w.Write(b); err != nil {
		return err
	}
	return o.rc.Flush()
}

func (o *responseOut) cut() { _ = o.rc.SetWriteDeadline(time.Now()) }

func (o *responseOut) end(bool) {}

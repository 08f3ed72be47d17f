// Package sse is the Server-Sent Events transport (SPEC §12): for networks
// that block WebSockets, a session's events go down a text/event-stream
// response and its commands come up as HTTP POSTs, which chat.Node takes
// on any replica (Node.PostCommands). The session is the same as a
// WebSocket's; only the carrying differs.
//
// A stream's handler stays in its request for the session's life (an SSE
// response cannot be handed off the way a hijacked WebSocket is), so each
// stream counts against go-zero's MaxConns and, while it lasts, as a
// request in flight.
package sse

import (
	"context"
	"net/http"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/hub"
	"chat/internal/protocol"
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
	user, ok := t.node.Admit(w, r)
	if !ok {
		return
	}
	pprof.SetGoroutineLabels(labelsStream)
	defer pprof.SetGoroutineLabels(context.Background()) // net/http reuses the goroutine
	s := &stream{
		w:         w,
		rc:        http.NewResponseController(w),
		window:    t.cfg.CoalesceWindow,
		work:      make(chan struct{}, 1),
		aborted:   make(chan struct{}),
		lastWrite: time.Now().Add(-time.Hour),
	}
	session := t.node.Open(user, s, chat.SessionOptions{Commanded: true})
	defer func() {
		session.End()
		session.Finish()
	}()
	s.client = session.Outbox()
	// Proxies that buffer responses (nginx) would hold events back.
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s.client.SetWriter(s)
	session.Start() // on failure the close event is queued
	s.run(r.Context(), t.cfg.PingInterval)
}

// stream writes one session's outbox to its response. Its run, in the
// request's goroutine, is the only writer of the response: events, the
// heartbeat and the close event.
type stream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	client *hub.Client
	window time.Duration // Chat.CoalesceWindow, as for a WebSocket

	work    chan struct{} // capacity 1: Schedule or Hurry was called
	hurried atomic.Bool
	aborted chan struct{}
	abort   sync.Once

	lastWrite time.Time
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
		_ = s.rc.SetWriteDeadline(time.Now())
	})
}

// heartbeat is a comment line: EventSource ignores it, and a proxy sees
// traffic on an idle stream.
var heartbeat = []byte(": ping\n\n")

// run writes until the session closes (its close event is the last), the
// client goes away, or a write fails.
func (s *stream) run(ctx context.Context, pingInterval time.Duration) {
	ping := time.NewTicker(pingInterval)
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
			if !s.write(heartbeat) {
				return
			}
			continue
		case <-ctx.Done():
			return
		case <-s.aborted:
			return
		}
		for claimed && !waiting {
			if wait := s.window - time.Since(s.lastWrite); wait > 0 && !s.hurried.Load() {
				window.Reset(wait) // coalesce: more events may come meanwhile
				waiting = true
				break
			}
			if !s.flush() {
				return
			}
			claimed = !s.client.Idle()
		}
	}
}

// flush writes everything queued as one SSE event, one JSON object per
// data: line (an EventSource joins them with "\n", so the client splits
// as it splits a WebSocket frame), and the close event when the session
// is closing. It reports whether the stream goes on. The events go
// straight into the response's own buffer (net/http's, 4 KiB): a stream
// keeps no buffer of its own between writes.
func (s *stream) flush() bool {
	s.hurried.Store(false)
	b := s.client.Take()
	ok := true
	if len(b.Events) > 0 || (b.Close != nil && b.Close.Code != 0) {
		_ = s.rc.SetWriteDeadline(time.Now().Add(writeWait))
		for _, event := range b.Events {
			ok = ok && s.data(event)
		}
		if len(b.Events) > 0 {
			ok = ok && s.raw(newline)
		}
		if b.Close != nil && b.Close.Code != 0 {
			closing := protocol.MustEncode(protocol.Close{Type: "close", Code: b.Close.Code, Reason: b.Close.Text})
			ok = ok && s.data(closing) && s.raw(newline)
		}
		ok = ok && s.rc.Flush() == nil
		if ok {
			s.lastWrite = time.Now()
		}
	}
	clear(b.Events) // an idle session must not keep its last events alive
	return ok && b.Close == nil
}

var (
	dataPrefix = []byte("data: ")
	newline    = []byte("\n")
)

// data writes one data: line.
func (s *stream) data(event []byte) bool {
	return s.raw(dataPrefix) && s.raw(event) && s.raw(newline)
}

func (s *stream) raw(b []byte) bool {
	_, err := s.w.Write(b)
	return err == nil
}

// write sends b and flushes it to the client, within writeWait.
func (s *stream) write(b []byte) bool {
	_ = s.rc.SetWriteDeadline(time.Now().Add(writeWait))
	if _, err := s.w.Write(b); err != nil {
		return false
	}
	if err := s.rc.Flush(); err != nil {
		return false
	}
	s.lastWrite = time.Now()
	return true
}

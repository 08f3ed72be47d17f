// Package ws is the WebSocket transport: it upgrades /ws, reads frames
// into the connection's session (chat.Session) and writes the session's
// outbox as WebSocket frames. What it does below gorilla/websocket is in
// package wsraw.
package ws

import (
	"errors"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"chat/internal/chat"
	"chat/internal/hub"
	"chat/internal/transport/wsraw"

	"github.com/gorilla/websocket"
	"github.com/zeromicro/go-zero/core/logx"
)

const (
	// writeWait bounds one blocking socket write; a reader that takes
	// longer is gone.
	writeWait = 10 * time.Second
	// closeGrace is how long a close frame waits for the peer's answer
	// before the socket is closed anyway.
	closeGrace = 2 * time.Second
)

var (
	labelsWaiting = chat.Labels(chat.LabelWaiting)
	labelsReading = chat.Labels(chat.LabelReading)
	labelsWriting = chat.Labels(chat.LabelWriting)
	labelsFlusher = chat.Labels(chat.LabelFlusher)
)

// Conn is one WebSocket connection. Its read pump (one goroutine at a time,
// see await) is the only reader of ws and runs its commands in order. Its
// writer (writer.go: a flusher, or for a while a goroutine of its own) is
// the only writer of the socket, control frames included.
type Conn struct {
	t       *Transport
	session *chat.Session
	client  *hub.Client  // the session's outbox
	sock    wsraw.Socket // by value: one object less per idle connection
	ws      *websocket.Conn

	closing bool // read pump only: a close was requested, frames are ignored

	readDone  chan struct{} // closed when the read pump stops reading
	writeDone chan struct{} // closed when the writer has closed the socket
	finished  sync.Once     // closes the socket and writeDone

	pinger *time.Timer

	// The writer's (see writer.go).
	flusher   *flusher
	handshake []byte      // the upgrade's response, sent ahead of the first frame (wsraw.Socket)
	hurried   atomic.Bool // a reply or a frame's worth waits: write without coalescing
	timedAt   int         // the flusher's: index in its timed list, -1 when not in it
	lastWrite int64       // clock() of the last write
}

// The read pump. A goroutine's stack grows while it runs a command and, in
// practice, never shrinks back: the runtime halves a stack only when a
// quarter of it would do. A reader that waits in the goroutine that ran its
// last command would hold 4–8 KiB for as long as it is idle. So the
// connection waits for its next frame in a fresh goroutine (await) that has
// run nothing else and needs the smallest stack, reads with it what has
// arrived, then hands the waiting on to another fresh goroutine. One reader
// runs at a time; the go statement orders each hand-over.

// readPump starts the connection, then leaves the waiting to await.
func (c *Conn) readPump() {
	pprof.SetGoroutineLabels(labelsReading)
	c.read(c.begin)
}

// await waits for the next frame. It answers the client's pongs itself, so
// that an idle connection's heartbeat never wakes the deep read path.
func (c *Conn) await() {
	for c.skipPong(true) {
	}
	pprof.SetGoroutineLabels(labelsReading)
	c.read(c.readFrames)
}

// read runs step; when step says reading goes on, a fresh goroutine awaits
// the next frame, and otherwise the connection is cleaned up.
func (c *Conn) read(step func() bool) {
	more := false
	defer func() {
		if p := recover(); p != nil {
			logx.Errorf("connection %s: panic: %v", c.client.ID, p)
			c.session.CloseNow(websocket.CloseInternalServerErr, "internal error")
			more = false
		}
		if more {
			pprof.SetGoroutineLabels(labelsWaiting) // for await, which inherits them
			go c.await()
		} else {
			c.cleanup()
		}
	}()
	more = step()
}

// begin starts the session and sets up reading. Only once the welcome is
// queued may the flushers write: the handshake's response then goes out
// with the welcome (or with the close when starting failed).
func (c *Conn) begin() bool {
	defer c.client.SetWriter(c)
	if !c.session.Start() {
		return false
	}
	c.ws.SetReadLimit(int64(c.t.cfg.MaxFrameBytes)) // over it gorilla answers 1009 and the read fails
	c.alive()
	c.ws.SetPongHandler(func(string) error { c.alive(); return nil })
	// Gorilla's own handlers would answer pings and closes by writing to
	// the socket from the read pump, beside the writer: queue them instead.
	c.ws.SetPingHandler(func(data string) error {
		c.client.Control(wsraw.PongFrame([]byte(data)))
		return nil
	})
	c.ws.SetCloseHandler(func(code int, _ string) error {
		c.closing = true
		// Echo the peer's code after what is queued: the answers to the
		// commands it sent before its close (RFC 6455 §5.5.1 lets the
		// close wait for them; the peer reads until it has ours).
		c.client.Close(hub.CloseRequest{Code: code, Flush: true})
		return nil
	})
	return true
}

// alive moves the read deadline: a peer that sends nothing, not even a
// pong, within PongTimeout is gone.
func (c *Conn) alive() { _ = c.ws.SetReadDeadline(time.Now().Add(c.t.cfg.PongTimeout)) }

// readFrames reads messages and runs their commands until nothing that has
// arrived is left unread. It returns false when reading has ended.
func (c *Conn) readFrames() bool {
	for {
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
			// Gorilla fails a frame whose 64-bit length has its top bit set
			// (RFC 6455 §5.2) with ErrReadLimit but, unlike a frame over
			// the limit, without a close frame of its own.
			if errors.Is(err, websocket.ErrReadLimit) && !c.sock.GorillaWroteClose() {
				c.closeWith(websocket.CloseProtocolError, "invalid frame length")
			}
			return false
		}
		c.alive()
		switch {
		case c.closing:
			// A close was requested: wait for the peer's close frame.
		case kind != websocket.TextMessage:
			c.closeWith(websocket.CloseUnsupportedData, "binary frames are not accepted")
		case !utf8.Valid(data):
			c.closeWith(websocket.CloseInvalidFramePayloadData, "text frame is not valid UTF-8")
		default:
			c.session.HandleFrame(data)
		}
		for c.skipPong(false) { // a pong that arrived meanwhile must not keep this goroutine
		}
		if c.sock.Reader.Buffered() == 0 {
			return true
		}
	}
}

// skipPong consumes a whole pong at the frame boundary in place of
// gorilla and reports whether it did (wsraw.NextControl); a close frame
// with a 1-byte payload is a protocol error.
func (c *Conn) skipPong(wait bool) bool {
	switch wsraw.NextControl(c.sock.Reader, wait) {
	case wsraw.PeekedPong:
		c.alive()
		return true
	case wsraw.PeekedBadClose:
		c.closeWith(websocket.CloseProtocolError, "close frame with a 1-byte payload")
	}
	return false
}

func (c *Conn) closeWith(code int, text string) {
	c.closing = true
	c.client.Close(hub.CloseRequest{Code: code, Text: text})
}

// cleanup runs when reading ends: the session ends (it leaves its rooms,
// presence and the Hub), and once the writer has closed the socket it
// finishes.
func (c *Conn) cleanup() {
	close(c.readDone)
	c.session.End()
	<-c.writeDone
	c.session.Finish()
}

// ping keeps the connection alive and lets the read deadline notice a
// peer that stopped answering. It runs on a timer, not in a goroutine of
// its own, and queues the ping for the writer like any frame.
func (c *Conn) ping() {
	if c.client.Control(wsraw.PingFrame) { // a closing connection needs no more
		c.pinger.Reset(c.t.cfg.PingInterval)
	}
}

// finish closes the socket once; cleanup waits for it.
func (c *Conn) finish() {
	c.finished.Do(func() {
		c.pinger.Stop()
		_ = c.ws.Close()
		close(c.writeDone)
	})
}

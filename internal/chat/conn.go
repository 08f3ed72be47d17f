package chat

import (
	"bufio"
	"bytes"
	"context"
	"sync"
	"time"
	"unicode/utf8"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"

	"github.com/gorilla/websocket"
	"github.com/zeromicro/go-zero/core/logx"
)

const (
	// writeWait bounds one socket write; a reader that takes longer is gone.
	writeWait = 10 * time.Second
	// closeGrace is how long a close frame waits for the peer's answer
	// before the socket is closed anyway.
	closeGrace = 2 * time.Second
	// maxFrameOut caps a batched outgoing frame; more events start another.
	maxFrameOut = 64 << 10
	// coalesceWindow is the least time between two writes to a connection
	// under load: the latency it may add, for far fewer system calls.
	coalesceWindow = 30 * time.Millisecond
)

// Conn is one WebSocket connection. Its read pump (one goroutine at a time,
// see await) is the only reader of ws and runs its commands in order; its
// write pump is the only writer of data frames (control frames may be
// written by either, as gorilla allows).
type Conn struct {
	node     *Node
	ws       *websocket.Conn
	br       *bufio.Reader // gorilla's read buffer: what has arrived and is not read yet
	client   *hub.Client
	presence broker.Conn
	limiter  *tokenBucket

	rooms          map[string]struct{} // rooms joined; read pump only
	closing        bool                // read pump only: a close was requested, frames are ignored
	userSubscribed bool                // read pump only: start took a reference on the user's topic

	readDone  chan struct{} // closed when the read pump stops reading
	writeDone chan struct{} // closed when the writer has closed the socket
	finished  sync.Once     // closes the socket and writeDone

	// The writer's: at most one writer runs at a time.
	lastWrite time.Time
	coalesce  *time.Timer
	pinger    *time.Timer
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
func (c *Conn) readPump() { c.read(c.begin) }

// await waits for the next frame. It answers the client's pongs itself, so
// that an idle connection's heartbeat never wakes the deep read path.
func (c *Conn) await() {
	for c.skipPong(true) {
	}
	c.read(c.readFrames)
}

// read runs step; when step says reading goes on, a fresh goroutine awaits
// the next frame, and otherwise the connection is cleaned up.
func (c *Conn) read(step func() bool) {
	more := false
	defer func() {
		if p := recover(); p != nil {
			logx.Errorf("connection %s: panic: %v", c.client.ID, p)
			c.client.Close(hub.CloseRequest{Code: websocket.CloseInternalServerErr, Text: "internal error"})
			more = false
		}
		if more {
			go c.await()
		} else {
			c.cleanup()
		}
	}()
	more = step()
}

// begin registers the connection and sets up reading.
func (c *Conn) begin() bool {
	if !c.start() {
		return false
	}
	c.ws.SetReadLimit(int64(c.node.cfg.MaxFrameBytes)) // over it gorilla answers 1009 and the read fails
	c.alive()
	c.ws.SetPongHandler(func(string) error { c.alive(); return nil })
	return true
}

// alive moves the read deadline: a peer that sends nothing, not even a
// pong, within PongTimeout is gone.
func (c *Conn) alive() { _ = c.ws.SetReadDeadline(time.Now().Add(c.node.cfg.PongTimeout)) }

// readFrames reads messages and runs their commands until nothing that has
// arrived is left unread. It returns false when reading has ended.
func (c *Conn) readFrames() bool {
	for {
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
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
			c.handleFrame(data)
		}
		for c.skipPong(false) { // a pong that arrived meanwhile must not keep this goroutine
		}
		if c.br.Buffered() == 0 {
			return true
		}
	}
}

// skipPong consumes a whole pong frame at the frame boundary in place of
// gorilla, which it leaves at the same boundary, and reports whether it did.
// With wait it first waits until a frame starts to arrive (await);
// without, it looks only at what is already buffered. Anything else (other
// frames, protocol errors, read errors) is left for gorilla to read and
// report.
func (c *Conn) skipPong(wait bool) bool {
	if !wait && c.br.Buffered() < 2 {
		return false
	}
	head, err := c.br.Peek(2)
	// A client's pong: FIN and opcode 10, no reserved bits, masked, and a
	// payload of at most 125 bytes (RFC 6455 §5.5), after a 4-byte mask key.
	if err != nil || head[0] != 0x8A || head[1]&0x80 == 0 || head[1]&0x7F > 125 {
		return false
	}
	n := 2 + 4 + int(head[1]&0x7F)
	if !wait && c.br.Buffered() < n {
		return false
	}
	if _, err := c.br.Peek(n); err != nil {
		return false
	}
	_, _ = c.br.Discard(n)
	c.alive()
	return true
}

func (c *Conn) closeWith(code int, text string) {
	c.closing = true
	c.client.Close(hub.CloseRequest{Code: code, Text: text})
}

// start registers the connection: the user's topic first, so that a direct
// message sent once the user shows as online reaches it; presence before
// the welcome, so that a client that has its welcome is counted online; the
// welcome before the Hub can queue anything else.
func (c *Conn) start() bool {
	n := c.node
	ctx, cancel := brokerContext(context.Background())
	defer cancel()
	if err := n.subs.acquire(ctx, broker.User(c.client.User)); err != nil {
		logx.Errorf("connection %s: subscribe user: %v", c.client.ID, err)
		c.client.Close(hub.CloseRequest{Code: websocket.CloseTryAgainLater, Text: "broker unavailable"})
		return false
	}
	c.userSubscribed = true
	if err := n.broker.Connect(ctx, c.presence); err != nil {
		logx.Errorf("connection %s: presence: %v", c.client.ID, err)
	}
	c.client.EnqueueReply(protocol.MustEncode(protocol.Welcome{
		Type: "welcome", Client: c.client.ID, User: c.client.User, Node: n.ID,
		Limits: protocol.Limits{MaxText: n.cfg.MaxText, MaxRooms: n.cfg.MaxRooms, Rate: n.cfg.RateLimit},
	}))
	if err := n.hub.Register(c.client); err != nil {
		c.client.Close(hub.CloseRequest{Code: websocket.CloseGoingAway, Text: "server shutting down"})
		return false
	}
	return true
}

// cleanup runs when reading ends: the connection leaves its rooms (members
// get "left"), presence and the Hub, and waits for the write pump.
func (c *Conn) cleanup() {
	close(c.readDone)
	c.client.Close(hub.CloseRequest{}) // the peer is gone: a writer finishes the socket
	n := c.node
	n.hub.Unregister(c.client)
	ctx, cancel := brokerContext(context.Background())
	defer cancel()
	for room := range c.rooms {
		c.leaveRoom(ctx, room)
	}
	if err := n.broker.Disconnect(ctx, c.presence); err != nil {
		logx.Errorf("connection %s: presence: %v", c.client.ID, err)
	}
	if c.userSubscribed {
		if err := n.subs.release(ctx, broker.User(c.client.User)); err != nil {
			logx.Errorf("connection %s: unsubscribe user: %v", c.client.ID, err)
		}
	}
	<-c.writeDone
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
	n.admitted.Add(-1)
	n.wg.Done()
}

// write is the connection's writer. It runs only while there is something
// to write (hub.Client.SetWriter starts it), and under steady traffic one
// coalescing window longer, so an idle connection holds no writer
// goroutine: it writes queued events, batched into frames of
// newline-separated JSON, and the close frame, then closes the socket.
func (c *Conn) write() {
	defer func() {
		if p := recover(); p != nil {
			logx.Errorf("connection %s: writer panic: %v", c.client.ID, p)
			c.finish()
		}
	}()
	for {
		// A connection written to moments ago waits out the rest of the
		// window, so that what arrives meanwhile goes out in the same
		// frame: under load that turns one system call per event into one
		// per window. After a quiet spell, when a reply the client waits
		// for is queued, or once a frame's worth is queued, it writes at once.
		if wait := coalesceWindow - time.Since(c.lastWrite); wait > 0 {
			if c.coalesce == nil { // made on first use: most idle connections never need it
				c.coalesce = time.NewTimer(wait)
			} else {
				c.coalesce.Reset(wait)
			}
			select {
			case <-c.coalesce.C:
			case <-c.client.Urgent():
				c.coalesce.Stop()
			case <-c.readDone:
				c.coalesce.Stop()
			}
		}
		batch, closing := c.client.Drain()
		steady := false
		if len(batch) > 0 {
			err := c.writeBatch(batch)
			clear(batch) // an idle connection must not keep its last events alive
			if err != nil {
				// The peer is gone or stuck: end the connection. A close
				// request makes sure no writer starts again.
				c.client.Close(hub.CloseRequest{})
				c.finish()
				return
			}
			now := time.Now()
			steady = now.Sub(c.lastWrite) < 2*coalesceWindow
			c.lastWrite = now
		}
		if closing != nil {
			c.writeClose(closing)
			c.finish()
			return
		}
		// After writes in consecutive windows the writer waits one more
		// window before it ends: under steady traffic one writer goes on,
		// where a writer per window would cost a goroutine start and a
		// stack grown anew. After a lone write (a welcome, a quiet room's
		// message) it ends at once and leaves no timer behind.
		if !steady && c.client.Idle() {
			return
		}
	}
}

// ping keeps the connection alive and lets the read deadline notice a
// peer that stopped answering. It runs on a timer, not in a goroutine of
// its own; gorilla allows WriteControl beside the writer.
func (c *Conn) ping() {
	if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeWait)); err != nil {
		return // the read deadline ends the connection
	}
	c.pinger.Reset(c.node.cfg.PingInterval)
}

// finish closes the socket once; cleanup waits for it.
func (c *Conn) finish() {
	c.finished.Do(func() {
		c.pinger.Stop()
		_ = c.ws.Close()
		close(c.writeDone)
	})
}

// framePool holds the buffers that batches are assembled in: a frame is
// written with one WriteMessage, which gorilla sends in one system call,
// where writing event by event through NextWriter flushed every 4 KiB.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, maxFrameOut); return &b }}

// writeBatch writes queued events as frames of newline-separated JSON, each
// at most maxFrameOut bytes unless a single event is larger.
func (c *Conn) writeBatch(batch [][]byte) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(writeWait))
	if len(batch) == 1 {
		return c.ws.WriteMessage(websocket.TextMessage, batch[0])
	}
	bp := framePool.Get().(*[]byte)
	frame := (*bp)[:0]
	defer func() {
		if cap(frame) <= 4*maxFrameOut { // do not keep an outsized buffer
			*bp = frame[:0]
			framePool.Put(bp)
		}
	}()
	for _, event := range batch {
		if len(frame) > 0 && len(frame)+1+len(event) > maxFrameOut {
			if err := c.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
				return err
			}
			frame = frame[:0]
		}
		if len(frame) > 0 {
			frame = append(frame, '\n')
		}
		frame = append(frame, event...)
	}
	return c.ws.WriteMessage(websocket.TextMessage, frame)
}

// writeClose sends the close frame and waits briefly for the peer's answer,
// so that the peer reads the code before the socket goes.
func (c *Conn) writeClose(req *hub.CloseRequest) {
	if req.Code == 0 {
		return
	}
	msg := websocket.FormatCloseMessage(req.Code, req.Text)
	if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(writeWait)); err != nil {
		return
	}
	select {
	case <-c.readDone:
	case <-time.After(closeGrace):
	}
}

// handleFrame runs each newline-separated command of a frame in order.
func (c *Conn) handleFrame(data []byte) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			c.handleCommand(line)
		}
	}
}

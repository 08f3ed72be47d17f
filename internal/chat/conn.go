package chat

import (
	"bufio"
	"context"
	"errors"
	"net"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"

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

// The goroutines of connections carry a pprof label (GoroutineLabel),
// which a goroutine profile shows beside each stack: a connection's reader
// waiting for a frame (LabelWaiting), its reader running commands
// (LabelReading), a goroutine writing to one connection (LabelWriting), or
// a flusher (LabelFlusher). Operators see what connections are doing; tests
// count them without depending on function names.
const (
	GoroutineLabel = "chat"
	LabelWaiting   = "reader-waiting"
	LabelReading   = "reader-reading"
	LabelWriting   = "writer"
	LabelFlusher   = "flusher"
)

// Set with pprof.SetGoroutineLabels, which costs no allocation.
var (
	labelsWaiting = goroutineLabels(LabelWaiting)
	labelsReading = goroutineLabels(LabelReading)
	labelsWriting = goroutineLabels(LabelWriting)
	labelsFlusher = goroutineLabels(LabelFlusher)
)

func goroutineLabels(value string) context.Context {
	return pprof.WithLabels(context.Background(), pprof.Labels(GoroutineLabel, value))
}

// Conn is one WebSocket connection. Its read pump (one goroutine at a time,
// see await) is the only reader of ws and runs its commands in order. Its
// writer (writer.go: a flusher, or for a while a goroutine of its own) is
// the only writer of the socket, control frames included.
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

	pinger *time.Timer

	// The writer's (see writer.go).
	flusher   *flusher
	held      *heldConn       // the socket under gorilla; writers write to held.Conn
	tcp       *net.TCPConn    // the socket, for its options; nil: none (TLS)
	raw       syscall.RawConn // the socket, for writes that must not block; nil: none (TLS)
	handshake []byte          // the upgrade's response, sent ahead of the first frame (heldConn)
	hurried   atomic.Bool     // a reply or a frame's worth waits: write without coalescing
	timedAt   int             // the flusher's: index in its timed list, -1 when not in it
	lastWrite int64           // clock() of the last write
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
			c.client.Close(hub.CloseRequest{Code: websocket.CloseInternalServerErr, Text: "internal error"})
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

// begin registers the connection and sets up reading.
func (c *Conn) begin() bool {
	if !c.start() {
		return false
	}
	c.ws.SetReadLimit(int64(c.node.cfg.MaxFrameBytes)) // over it gorilla answers 1009 and the read fails
	c.alive()
	c.ws.SetPongHandler(func(string) error { c.alive(); return nil })
	// Gorilla's own handlers would answer pings and closes by writing to
	// the socket from the read pump, beside the writer: queue them instead.
	c.ws.SetPingHandler(func(data string) error {
		c.client.Control(appendFrame(nil, opPong, []byte(data)))
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
func (c *Conn) alive() { _ = c.ws.SetReadDeadline(time.Now().Add(c.node.cfg.PongTimeout)) }

// readFrames reads messages and runs their commands until nothing that has
// arrived is left unread. It returns false when reading has ended.
func (c *Conn) readFrames() bool {
	for {
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
			// Gorilla fails a frame whose 64-bit length has its top bit set
			// (RFC 6455 §5.2) with ErrReadLimit but, unlike a frame over
			// the limit, without a close frame of its own.
			if errors.Is(err, websocket.ErrReadLimit) && !c.held.wroteClose.Load() {
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
	// A close frame's payload is empty or starts with a 2-byte code (RFC
	// 6455 §5.5.1); gorilla takes a 1-byte one for no code at all. (Within
	// a fragmented message, where this does not look, it still does.)
	if err == nil && head[0] == 0x88 && head[1] == 0x81 {
		c.closeWith(websocket.CloseProtocolError, "close frame with a 1-byte payload")
		return false
	}
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
	// Only now may the flushers write: the handshake's response then goes
	// out with the welcome (or with the close when starting fails).
	defer c.client.SetWriter(c)
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
// get "left"), presence and the Hub, and waits for the writer to close the socket.
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
	n.release(c.client.User)
	n.wg.Done()
}

// ping keeps the connection alive and lets the read deadline notice a
// peer that stopped answering. It runs on a timer, not in a goroutine of
// its own, and queues the ping for the writer like any frame.
func (c *Conn) ping() {
	if c.client.Control(pingFrame) { // a closing connection needs no more
		c.pinger.Reset(c.node.cfg.PingInterval)
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

// handleFrame runs each newline-separated command of a frame in order.
func (c *Conn) handleFrame(data []byte) {
	for line := range protocol.Lines(data) {
		c.handleCommand(line)
	}
}

package ws

import (
	"bytes"
	"math"
	"net"
	"runtime/pprof"
	"sync"
	"time"

	"chat/internal/hub"
	"chat/internal/transport/wsraw"

	"github.com/zeromicro/go-zero/core/logx"
)

// The write path. Under fan-out load a node writes to every member of a
// room once per coalescing window, and what that costs is mostly the
// writing machinery, not the system call: a goroutine woken per connection
// per window, its timer and select, its stack grown anew, a write deadline
// moved per write, and gorilla's copy of the frame into its own buffer. So
// a node has a few flushers (one per CPU) instead of a writer goroutine per
// connection. A flusher takes the connections that have something queued,
// waits out each one's coalescing window, assembles its events into
// WebSocket frames in one buffer and writes them with one non-blocking
// system call straight to the socket. Only a connection whose socket
// buffer is full (a slow reader), or that is closing (the close frame waits
// for the peer's answer), is handed to a goroutine of its own, which writes
// with a deadline until the queue is empty and then gives the connection
// back. A flusher never blocks on a connection.
//
// Ownership: hub.Client's writer claim says who writes a connection. From
// Schedule until Idle ends the claim the connection is in exactly one of: a
// flusher's incoming list, its timed list, the flusher's hands while it
// writes, or a goroutine of its own (writeOn). So one goroutine at a time
// writes the socket, and every frame goes through this path: data, pings,
// the answers to the peer's pings, and the close frame. (Gorilla itself
// writes a close frame when it finds a protocol error while reading; that
// connection is ending.)

const (
	// maxKeptBuffer is the largest assembly buffer a flusher keeps between
	// passes; a larger one (a recovery reply) is dropped after use.
	maxKeptBuffer = 1 << 20
)

// flusher writes the connections that its Schedule hands it. Its lists are
// guarded by mu; everything else is owned by its goroutine (run).
type flusher struct {
	// window is the least time between two writes to a connection under
	// load (Chat.CoalesceWindow): the latency it may add, for far fewer
	// system calls. slack lets connections whose window ends this soon go
	// with those whose window has ended, so that under steady load they
	// stay in step: one pass per window.
	window, slack int64

	wake chan struct{} // capacity 1: incoming or hints has entries
	quit chan struct{}
	done chan struct{}

	mu       sync.Mutex
	incoming []*Conn // claimed connections not yet looked at
	hints    []*Conn // connections that were hurried

	// Owned by run.
	timed    []*Conn // connections waiting out their window; nil: taken out
	earliest int64   // no window in timed ends before this (clock ns)
	armed    int64   // when timer fires; 0: not armed
	timer    *time.Timer
	again    []*Conn // written connections that had more queued meanwhile
	due      []*Conn // writeDue's, kept between passes
	buf      []byte  // frames are assembled here
	raw      *wsraw.RawWriter
	spareIn  []*Conn
	spareHnt []*Conn
}

func newFlusher(window time.Duration) *flusher {
	f := &flusher{
		window:   int64(window),
		slack:    int64(window / 10),
		wake:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		earliest: math.MaxInt64,
		timer:    time.NewTimer(time.Hour),
		raw:      wsraw.NewRawWriter(),
	}
	f.timer.Stop()
	go f.run()
	return f
}

// stop ends the flusher's goroutine once no connection uses it.
func (f *flusher) stop() {
	close(f.quit)
	<-f.done
}

// clockBase anchors clock: a monotonic reading in nanoseconds.
var clockBase = time.Now()

func clock() int64 { return int64(time.Since(clockBase)) }

func (f *flusher) push(list *[]*Conn, c *Conn) {
	f.mu.Lock()
	*list = append(*list, c)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *flusher) run() {
	pprof.SetGoroutineLabels(labelsFlusher)
	defer close(f.done)
	for {
		select {
		case <-f.wake:
		case <-f.timer.C:
			f.armed = 0
		case <-f.quit:
			f.timer.Stop()
			return
		}
		f.safePass()
	}
}

// safePass is pass, and a panic in it (each connection's write recovers
// its own) is logged rather than ending the process.
func (f *flusher) safePass() {
	defer func() {
		if p := recover(); p != nil {
			logx.Errorf("flusher panic: %v", p)
		}
	}()
	f.pass()
}

// pass looks at what was handed over since the last pass and writes what
// is due.
func (f *flusher) pass() {
	f.mu.Lock()
	incoming, hints := f.incoming, f.hints
	f.incoming, f.hints = f.spareIn[:0], f.spareHnt[:0]
	f.mu.Unlock()

	now := clock()
	for _, c := range incoming {
		f.classify(c, now)
	}
	for _, c := range hints {
		if c.timedAt >= 0 { // hurried while it waited out its window
			f.timed[c.timedAt] = nil
			c.timedAt = -1
			f.write(c, now)
		}
	}
	clear(incoming)
	clear(hints)
	f.spareIn, f.spareHnt = incoming, hints
	if now+f.slack >= f.earliest {
		f.writeDue(now)
	}
	for len(f.again) > 0 {
		again := f.again
		f.again = nil
		for _, c := range again {
			f.classify(c, now)
		}
	}
	f.arm(now)
}

// classify writes c at once if its window has passed or it was hurried,
// and otherwise lets it wait out its window.
func (f *flusher) classify(c *Conn, now int64) {
	if c.hurried.Load() || now-c.lastWrite >= f.window {
		f.write(c, now)
		return
	}
	c.timedAt = len(f.timed)
	f.timed = append(f.timed, c)
	f.earliest = min(f.earliest, c.lastWrite+f.window)
}

// writeDue writes the waiting connections whose window ends by now (give
// or take the slack) and keeps the others.
func (f *flusher) writeDue(now int64) {
	keep := f.timed[:0]
	earliest := int64(math.MaxInt64)
	due := f.due[:0]
	for _, c := range f.timed {
		if c == nil {
			continue
		}
		if end := c.lastWrite + f.window; end > now+f.slack {
			c.timedAt = len(keep)
			keep = append(keep, c)
			earliest = min(earliest, end)
			continue
		}
		c.timedAt = -1
		due = append(due, c)
	}
	clear(f.timed[len(keep):])
	f.timed, f.earliest = keep, earliest
	for _, c := range due {
		f.write(c, now)
	}
	clear(due)
	f.due = due[:0]
}

// arm sets the timer for the first window that ends.
func (f *flusher) arm(now int64) {
	if len(f.timed) == 0 {
		f.earliest = math.MaxInt64
		return
	}
	if f.armed != 0 && f.armed <= f.earliest {
		return
	}
	f.armed = f.earliest
	f.timer.Reset(time.Duration(max(f.earliest-now, 0)))
}

// write takes what c has queued and writes it without blocking.
func (f *flusher) write(c *Conn, now int64) {
	defer c.recoverWriter()
	var closing *hub.CloseRequest
	f.buf, closing = c.take(f.buf[:0])
	if len(f.buf) > 0 {
		c.lastWrite = now
		n, err := f.raw.WriteNow(&c.sock, f.buf)
		if err != nil {
			c.abort() // the peer is gone
			return
		}
		if n < len(f.buf) {
			go c.writeOn(bytes.Clone(f.buf[n:])) // the socket is full: wait in a goroutine of its own
			f.trim()
			return
		}
	}
	f.trim()
	switch {
	case closing != nil && closing.Code == 0:
		c.finish() // the peer is gone: nothing to say
	case closing != nil:
		go c.writeOn(nil) // the close frame waits for the peer's answer
	case !c.client.Idle():
		f.again = append(f.again, c)
	}
}

// take appends to dst, as frames, everything c has queued (after the
// handshake's response, the first time), and returns the close request.
func (c *Conn) take(dst []byte) ([]byte, *hub.CloseRequest) {
	c.hurried.Store(false)
	b := c.client.Take()
	dst = wsraw.AppendFrames(append(dst, c.handshake...), b.Controls, b.Events)
	c.handshake = nil
	clear(b.Events) // an idle connection must not keep its last events alive
	return dst, b.Close
}

// recoverWriter, deferred by a writer, ends the connection on a panic.
func (c *Conn) recoverWriter() {
	if p := recover(); p != nil {
		logx.Errorf("connection %s: writer panic: %v", c.client.ID, p)
		c.abort()
	}
}

func (f *flusher) trim() {
	if cap(f.buf) > maxKeptBuffer {
		f.buf = nil
	}
}

// Schedule is hub.Writer's: c has something to write and is now the flusher's.
func (c *Conn) Schedule() { c.flusher.push(&c.flusher.incoming, c) }

// Hurry is hub.Writer's: write c without waiting out its window.
func (c *Conn) Hurry() {
	if c.hurried.CompareAndSwap(false, true) {
		c.flusher.push(&c.flusher.hints, c)
	}
}

// writeOn writes c's socket from a goroutine of its own, with a deadline:
// first pending, then whatever is queued, until the queue is empty (c goes
// back to the flushers) or c closes. It holds the writer's claim.
func (c *Conn) writeOn(pending []byte) {
	pprof.SetGoroutineLabels(labelsWriting)
	defer c.recoverWriter()
	conn := c.sock.Conn
	for {
		if len(pending) > 0 {
			_ = conn.SetWriteDeadline(time.Now().Add(writeWait))
			if _, err := conn.Write(pending); err != nil {
				c.abort() // gone, or not reading for writeWait
				return
			}
			c.lastWrite = clock()
		}
		var closing *hub.CloseRequest
		pending, closing = c.take(pending[:0])
		if len(pending) > 0 {
			continue
		}
		if closing != nil {
			c.writeClose(conn, closing)
			c.finish()
			return
		}
		_ = conn.SetWriteDeadline(time.Time{}) // writeNow must not find an old deadline
		if c.client.Idle() {
			return
		}
	}
}

// writeClose sends the close frame and waits briefly for the peer's
// answer, so that the peer reads the code before the socket goes. A peer
// that does not answer may have stopped reading (a slow consumer): the
// close frame then sits behind unread data in the kernel, and a plain close
// would leave the socket holding it in FIN-WAIT-1 for minutes. So the frame
// gets writeWait to reach the peer, and the socket is reset past it (SPEC §11).
func (c *Conn) writeClose(conn net.Conn, req *hub.CloseRequest) {
	if req.Code == 0 {
		return
	}
	deadline := time.Now().Add(writeWait)
	_ = conn.SetWriteDeadline(deadline)
	if _, err := conn.Write(wsraw.CloseFrame(req.Code, req.Text)); err != nil {
		c.abort()
		return
	}
	select {
	case <-c.readDone:
		return
	case <-time.After(closeGrace):
	}
	if !c.delivered(deadline) {
		c.abort()
	}
}

// delivered waits until the peer has acknowledged everything written to
// the socket, and reports whether it did by the deadline. Where the kernel
// cannot tell (TLS, not Linux) it reports true: the socket is closed as usual.
func (c *Conn) delivered(deadline time.Time) bool {
	for {
		n, ok := c.sock.Unacked()
		if !ok || n == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// abort ends the connection at once: the Hub stops queueing for it and the
// socket is reset (RST), so the kernel drops whatever it still holds for a
// peer that is gone or no longer reads.
func (c *Conn) abort() {
	c.client.Close(hub.CloseRequest{})
	c.reset()
	c.finish()
}

// reset makes the next close of the socket a reset: nothing written and
// unsent outlives it.
func (c *Conn) reset() { c.sock.Reset() }

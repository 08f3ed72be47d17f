package hub

import (
	"sync"
	"sync/atomic"
)

// Client is the Hub's view of one connection: its identity and its outbound
// queue. The Hub and the connection's read pump enqueue; only the
// connection's writer drains (Take). The queue is bounded in bytes, not
// events: a healthy reader that lags while the CPU is saturated keeps up in
// bytes, while one that stopped reading does not.
type Client struct {
	ID   string
	User string

	maxQueue int
	wake     chan struct{} // capacity 1: "there is something to write or a close"; made by Wake, guarded by mu

	mu       sync.Mutex // guards the fields below; held only for O(1) work, never across I/O
	queue    [][]byte
	spare    [][]byte // the slice the writer returned, reused to avoid allocating per batch
	queued   int      // bytes in queue
	controls [][]byte // frames written as they are, ahead of the events (heartbeats)
	closing  *CloseRequest
	writer   Writer // asked to write when there is work and it holds no claim (SetWriter); nil: the owner waits on Wake
	running  bool   // the writer holds the claim: it writes until Idle ends it

	slow *atomic.Int64 // the Hub's slow-consumer counter

	// Owned by the Hub's loop.
	userAt       int                 // its place in Hub.users[User]
	rooms        map[string]struct{} // the rooms the Hub has it in
	staged       [][]byte            // events for it not yet handed to its queue
	stagedUrgent bool                // staged holds a reply
	dirty        bool                // it is in Hub.dirty
}

// CloseRequest says how a connection is to be closed.
type CloseRequest struct {
	Code  int    // WebSocket close code; 0: the peer is already gone, just stop
	Text  string // close reason
	Flush bool   // write what is queued first
}

// NewClient makes a client whose queue holds at most maxQueueBytes behind
// its oldest event (so one event is always admitted to an empty queue).
func NewClient(id, user string, maxQueueBytes int) *Client {
	return &Client{ID: id, User: user, maxQueue: maxQueueBytes}
}

// Enqueue adds an encoded event to the queue without blocking. A client
// whose queue would exceed its limit is closed as a slow consumer (4008) and
// the event dropped; it reports whether the event was queued.
func (c *Client) Enqueue(event []byte) bool {
	return c.enqueue([][]byte{event}, false) == 1
}

// enqueue adds events under one lock and reports how many were queued.
// urgent asks the writer not to wait to coalesce them.
func (c *Client) enqueue(events [][]byte, urgent bool) int {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return 0
	}
	queued, slow := 0, false
	for _, event := range events {
		// The oldest queued event is not counted: it is the next to be
		// written, and a large one (a recovery reply) must not trip the
		// rule for the small events that follow it.
		if len(c.queue) > 0 && c.queued-len(c.queue[0])+len(event) > c.maxQueue {
			c.closing = &CloseRequest{Code: 4008, Text: "slow consumer"}
			c.queue, c.queued = nil, 0
			slow = true
			break
		}
		c.queue = append(c.queue, event)
		c.queued += len(event)
		queued++
	}
	full := c.queued >= FlushBytes
	w, start, wake := c.writer, c.claimWriterLocked(), c.wake
	c.mu.Unlock()
	if slow {
		queued = 0
		if c.slow != nil {
			c.slow.Add(1)
		}
	}
	c.signal(w, start, wake)
	if !slow && (full || urgent) && w != nil {
		w.Hurry()
	}
	return queued
}

// FlushBytes is how much queued data makes the writer stop waiting to
// coalesce: a full frame gains nothing from waiting, and a fast stream must
// not pile up towards the slow-consumer limit while the pump waits.
const FlushBytes = 64 << 10

// EnqueueReply is Enqueue for an answer the client is waiting for: the
// writer sends it without waiting to coalesce more events with it.
func (c *Client) EnqueueReply(event []byte) bool {
	return c.enqueue([][]byte{event}, true) == 1
}

// maxControls bounds the control frames waiting: a peer that pings and
// never reads gets answers to its latest pings only (RFC 6455 §5.5.3 allows it).
const maxControls = 4

// Control queues a frame to be written as it is, ahead of the queued
// events: a ping, or the answer to the peer's ping. It is not counted
// against the byte limit, and is dropped once a close was requested. It
// reports whether the client is still open.
func (c *Client) Control(frame []byte) bool {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false
	}
	if len(c.controls) >= maxControls {
		c.mu.Unlock()
		return true
	}
	c.controls = append(c.controls, frame)
	w, start, wake := c.writer, c.claimWriterLocked(), c.wake
	c.mu.Unlock()
	c.signal(w, start, wake)
	return true
}

// Close asks the writer to close the connection. The first request wins.
func (c *Client) Close(req CloseRequest) {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	c.closing = &req
	if !req.Flush {
		c.queue, c.queued = nil, 0
	}
	w, start, wake := c.writer, c.claimWriterLocked(), c.wake
	c.mu.Unlock()
	c.signal(w, start, wake)
}

// Writer writes a client's queue to its connection. The client calls it
// without holding its lock, from whichever goroutine queued the work (the
// Hub's loop among them), so neither method may block.
type Writer interface {
	// Schedule: there is something to write, or a close, and the writer
	// held no claim. The claim is now the writer's: the client will not
	// call Schedule again until Idle has ended it, so one writer at a time
	// drains the queue.
	Schedule()
	// Hurry: a reply the peer waits for, or a frame's worth of events, was
	// queued; write without waiting to coalesce more. It is called whether
	// or not the writer holds the claim.
	Hurry()
}

// SetWriter hands the client's writing to w, which drains (Take) and calls
// Idle when it finds nothing more to do. What was queued before is w's to
// write at once. Call it once.
func (c *Client) SetWriter(w Writer) {
	c.mu.Lock()
	c.writer = w
	start := c.pendingLocked() && c.claimWriterLocked()
	c.mu.Unlock()
	c.signal(w, start, nil)
}

// pendingLocked reports whether a writer has something to do. c.mu is held.
func (c *Client) pendingLocked() bool {
	return len(c.queue) > 0 || len(c.controls) > 0 || c.closing != nil
}

// claimWriterLocked reports whether the caller must start the writer. c.mu is held.
func (c *Client) claimWriterLocked() bool {
	if c.writer == nil || c.running {
		return false
	}
	c.running = true
	return true
}

// Idle ends the writer's run if nothing is queued and no close is pending;
// otherwise the writer goes on.
func (c *Client) Idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pendingLocked() {
		return false
	}
	c.running = false
	return true
}

// signal tells w to start writing (schedule), or else wakes an owner
// waiting on Wake. It is called without c.mu.
func (c *Client) signal(w Writer, schedule bool, wake chan struct{}) {
	if schedule {
		w.Schedule()
		return
	}
	if wake == nil {
		return // a writer runs and Drains without being woken, or nobody waits on Wake
	}
	select {
	case wake <- struct{}{}:
	default:
	}
}

// Wake is signalled when Drain has something to return, for an owner that
// drains without SetWriter. The channel is made on the first call: a
// connection with a writer never pays for it.
func (c *Client) Wake() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.wake == nil {
		c.wake = make(chan struct{}, 1)
		if c.pendingLocked() {
			c.wake <- struct{}{}
		}
	}
	return c.wake
}

// Batch is what a writer takes from a client's queue in one step.
type Batch struct {
	Controls [][]byte      // frames to write as they are, first
	Events   [][]byte      // encoded events, oldest first
	Close    *CloseRequest // once the events are written: how to close
}

// Take hands the writer everything queued, and the close request (to act
// on after writing the events). Events is the writer's until its next
// call to Take.
func (c *Client) Take() Batch {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := Batch{Controls: c.controls, Events: c.queue, Close: c.closing}
	for i := range c.spare {
		c.spare[i] = nil // let the previous batch's events be collected
	}
	spare := b.Events
	if oversized(spare, len(spare)) {
		spare = nil // a burst's slice carrying a small batch: not worth keeping
	}
	c.queue, c.spare, c.queued, c.controls = keptSlice(c.spare, len(b.Events)), spare, 0, nil
	return b
}

// maxIdleEvents is the most event slots a client keeps while its batches
// are small. A burst (the joined events of a room filling up, a backlog
// after a stall) grows its slices to hundreds of slots; kept for the
// connection's life, they would cost every idle connection kilobytes.
const maxIdleEvents = 64

// keptSlice is s emptied for reuse, or nil when it is far larger (16
// times) than the last batch (used events) needed: steady traffic, even
// uneven, reuses its slices, and a burst's go with the next small batch.
func keptSlice(s [][]byte, used int) [][]byte {
	if oversized(s, used) {
		return nil
	}
	return s[:0]
}

func oversized(s [][]byte, used int) bool { return cap(s) > maxIdleEvents && cap(s) > 16*used }

// Drain is Take for an owner that writes no control frames.
func (c *Client) Drain() ([][]byte, *CloseRequest) {
	b := c.Take()
	return b.Events, b.Close
}

// Closing reports whether a close was requested.
func (c *Client) Closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing != nil
}

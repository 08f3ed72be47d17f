package hub

import (
	"sync"
	"sync/atomic"
)

// Client is the Hub's view of one connection: its identity and its outbound
// queue. The Hub and the connection's read pump enqueue; only the
// connection's write pump drains (Drain). The queue is bounded in bytes, not
// events: a healthy reader that lags while the CPU is saturated keeps up in
// bytes, while one that stopped reading does not.
type Client struct {
	ID   string
	User string

	maxQueue int
	wake     chan struct{} // capacity 1: "there is something to write or a close"; made by Wake, guarded by mu
	urgent   chan struct{} // capacity 1: "a reply or a frame's worth is queued: write without waiting to coalesce"

	mu      sync.Mutex // guards the fields below; held only for O(1) work, never across I/O
	queue   [][]byte
	spare   [][]byte // the slice the write pump returned, reused to avoid allocating per batch
	queued  int      // bytes in queue
	closing *CloseRequest
	writer  func() // started when there is work and none runs (SetWriter); nil: the owner waits on Wake
	running bool   // a writer runs

	slow *atomic.Int64 // the Hub's slow-consumer counter

	// Owned by the Hub's loop.
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
	return &Client{ID: id, User: user, maxQueue: maxQueueBytes, urgent: make(chan struct{}, 1)}
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
	start, wake := c.claimWriterLocked(), c.wake
	c.mu.Unlock()
	if slow {
		queued = 0
		if c.slow != nil {
			c.slow.Add(1)
		}
	}
	c.signal(start, wake)
	if !slow && (full || urgent) {
		c.hurry()
	}
	return queued
}

// FlushBytes is how much queued data makes the write pump stop waiting to
// coalesce: a full frame gains nothing from waiting, and a fast stream must
// not pile up towards the slow-consumer limit while the pump waits.
const FlushBytes = 64 << 10

// EnqueueReply is Enqueue for an answer the client is waiting for: the
// write pump sends it without waiting to coalesce more events with it.
func (c *Client) EnqueueReply(event []byte) bool {
	return c.enqueue([][]byte{event}, true) == 1
}

func (c *Client) hurry() {
	select {
	case c.urgent <- struct{}{}:
	default:
	}
}

// Urgent is signalled when a reply, or FlushBytes of events, was queued.
func (c *Client) Urgent() <-chan struct{} { return c.urgent }

// Close asks the write pump to close the connection. The first request wins.
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
	start, wake := c.claimWriterLocked(), c.wake
	c.mu.Unlock()
	c.signal(start, wake)
}

// SetWriter makes the client start write in a goroutine of its own whenever
// there is something to write (or a close) and no writer runs; write must
// call Idle when it finds nothing more to do. An idle connection then holds
// no writer goroutine at all. Call it before anything is enqueued.
func (c *Client) SetWriter(write func()) {
	c.mu.Lock()
	c.writer = write
	c.mu.Unlock()
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
	if len(c.queue) > 0 || c.closing != nil {
		return false
	}
	c.running = false
	return true
}

func (c *Client) signal(startWriter bool, wake chan struct{}) {
	if startWriter {
		go c.writer()
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
		if len(c.queue) > 0 || c.closing != nil {
			c.wake <- struct{}{}
		}
	}
	return c.wake
}

// Drain hands the write pump everything queued, and the close request once
// the queue is empty. The returned slice is the writer's until its next
// call to Drain.
func (c *Client) Drain() ([][]byte, *CloseRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	batch := c.queue
	for i := range c.spare {
		c.spare[i] = nil // let the previous batch's events be collected
	}
	c.queue, c.spare, c.queued = c.spare[:0], batch, 0
	return batch, c.closing
}

// Closing reports whether a close was requested.
func (c *Client) Closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing != nil
}

package main

import (
	"bytes"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// receiver is one receiving connection: a WebSocket, or an SSE stream
// (-receiver-transport sse). After setup, its fields are owned by its read
// goroutine until done is closed; only delivered is shared.
type receiver struct {
	id   int
	url  string
	ws   *websocket.Conn // nil for an SSE stream
	sse  *sseStream      // nil for a WebSocket
	done chan struct{}

	raw      bool
	senders  int
	messages int

	delivered atomic.Int64 // unique bench messages received (read by the drain loop)

	lastSeq     int64      // the room seq last seen (chat mode)
	msgPrefix   []byte     // chat mode: how this room's message events start, up to the seq's digits
	got         []bitset   // per sender: counters received
	lastCounter []int      // per sender: highest counter received (raw mode order check)
	hist        *histogram // latencies
	lastRecvNs  int64      // receive time of the last bench message

	dups       int64
	outOfOrder int64
	seqGaps    int64 // chat mode: seqs skipped
	foreign    int64 // messages not sent by this run
	resyncs    int64
	errors     int64 // error events
	malformed  int64

	disconnect string // non-empty: the connection ended before the bench closed it
	closeEvent string // SSE: the stream's close event, as closeReason words a WebSocket's close
}

func newReceiver(id int, url string, ws *websocket.Conn, cfg *config) *receiver {
	return &receiver{
		id: id, url: url, ws: ws, done: make(chan struct{}),
		raw: cfg.raw, senders: cfg.senders, messages: cfg.messages,
		got:         make([]bitset, cfg.senders),
		lastCounter: make([]int, cfg.senders),
	}
}

// readLoop reads until the connection ends. closing tells whether the bench
// closed it (then the error is not a disconnect).
func (r *receiver) readLoop(pending [][]byte, closing *atomic.Bool) {
	defer close(r.done)
	now := time.Now().UnixNano()
	for _, line := range pending {
		r.handleLine(now, line)
	}
	// One buffer per receiver, reused for every frame: the bench must cost
	// far less than the server it measures.
	var buf bytes.Buffer
	for {
		_, rd, err := r.ws.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(rd)
		}
		if err != nil {
			if !closing.Load() {
				r.disconnect = closeReason(err)
			}
			return
		}
		now := time.Now().UnixNano()
		forEachLine(buf.Bytes(), func(line []byte) { r.handleLine(now, line) })
	}
}

// readSSELoop is readLoop for an SSE stream: each data line is an event,
// received when the read that brought its last bytes returned.
func (r *receiver) readSSELoop(pending [][]byte, closing *atomic.Bool) {
	defer close(r.done)
	now := time.Now().UnixNano()
	for _, line := range pending {
		r.handleLine(now, line)
	}
	s := r.sse
	for {
		line, err := s.next()
		if err != nil {
			if !closing.Load() {
				r.disconnect = r.closeEvent
				if r.disconnect == "" {
					r.disconnect = streamEndReason(err)
				}
			}
			return
		}
		r.handleLine(s.clock.now, line)
	}
}

func (r *receiver) handleLine(now int64, line []byte) {
	if r.raw {
		r.handlePayload(now, line)
		return
	}
	// Every message event of the room starts with the same bytes, up to
	// the seq (the server's field order): compare them instead of
	// searching the line for its fields.
	if p := r.msgPrefix; len(p) > 0 && len(line) > len(p) && string(line[:len(p)]) == string(p) {
		if seq, text, ok := parseMessageFrom(line[len(p):]); ok {
			r.handleMessage(now, seq, text)
			return
		}
	}
	switch string(eventTypeBytes(line)) {
	case "message":
		seq, text, ok := parseMessage(line)
		if !ok {
			r.malformed++
			return
		}
		if i := bytes.Index(line, seqKey); i >= 0 {
			r.msgPrefix = append(r.msgPrefix[:0], line[:i+len(seqKey)]...)
		}
		r.handleMessage(now, seq, text)
	case "resync":
		r.resyncs++
	case "error":
		r.errors++
	case "close": // SSE: the stream's last event (4008, 4003, 1001)
		r.closeEvent = closeEventReason(line)
	case "":
		r.malformed++
	}
}

// handleMessage records a room message.
func (r *receiver) handleMessage(now, seq int64, text []byte) {
	// A member receives every message of its room once, in seq order:
	// each seq must be the previous one plus 1, starting after the
	// join reply's seq.
	if seq != r.lastSeq+1 {
		r.outOfOrder++
		if seq > r.lastSeq+1 {
			r.seqGaps += seq - r.lastSeq - 1
		}
	}
	r.lastSeq = seq
	r.handlePayload(now, text)
}

// handlePayload records one received message text.
func (r *receiver) handlePayload(now int64, text []byte) {
	p, ok := parsePayload(text)
	if !ok || p.sender < 0 || p.sender >= r.senders || p.counter < 1 || p.counter > r.messages {
		r.foreign++
		return
	}
	if r.got[p.sender] == nil {
		r.got[p.sender] = newBitset(r.messages + 1)
	}
	if r.got[p.sender].has(p.counter) {
		r.dups++
		return
	}
	r.got[p.sender].set(p.counter)
	if r.raw {
		// Raw mode has no room seq: a sender's counters must increase.
		if p.counter < r.lastCounter[p.sender] {
			r.outOfOrder++
		} else {
			r.lastCounter[p.sender] = p.counter
		}
	}
	if r.hist == nil {
		r.hist = &histogram{}
	}
	r.hist.record(now - p.sentNs)
	r.lastRecvNs = now
	r.delivered.Add(1)
}

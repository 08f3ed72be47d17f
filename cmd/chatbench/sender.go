package main

import (
	"bytes"
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// sender is one sending connection: a send loop (the only writer) and a read
// goroutine that collects replies (chat mode) or its own echoes (raw mode).
type sender struct {
	id  int
	ws  *websocket.Conn
	cfg *config

	// acks tells the closed-loop send loop which counter was answered.
	acks chan ack

	// Owned by the send loop until it returns.
	sent     int
	writeErr string

	// Owned by the read goroutine until readDone is closed (chat mode); in
	// raw mode acked is written by the send loop, as there are no replies.
	acked      bitset
	errorCodes map[string]int
	disconnect string
	readDone   chan struct{}

	// sentAt[k] is when message k was written (unix ns), for the reply
	// latency; replyHist is the read goroutine's, like acked.
	sentAt    []atomic.Int64
	replyHist *histogram

	ackedN   atomic.Int64 // messages the server accepted (raw: written)
	answered atomic.Int64 // replies received, success or error (chat mode)
}

type ack struct {
	counter int
	ok      bool
}

func newSender(id int, ws *websocket.Conn, cfg *config) *sender {
	return &sender{
		id: id, ws: ws, cfg: cfg,
		acks:       make(chan ack, 64),
		acked:      newBitset(cfg.messages + 1),
		errorCodes: map[string]int{},
		readDone:   make(chan struct{}),
		sentAt:     make([]atomic.Int64, cfg.messages+1),
		replyHist:  &histogram{},
	}
}

// sendLoop sends cfg.messages messages, paced by cfg.rate, or one at a time
// waiting for each answer when the rate is 0, and stops early after
// cfg.sendFor. All senders share start, so their schedules line up.
func (s *sender) sendLoop(ctx context.Context, start time.Time) {
	var interval time.Duration
	if s.cfg.rate > 0 {
		interval = time.Duration(float64(time.Second) / s.cfg.rate)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	buf := make([]byte, 0, s.cfg.size+len(s.cfg.room)+128)
	for k := 1; k <= s.cfg.messages; k++ {
		if ctx.Err() != nil || (s.cfg.sendFor > 0 && time.Since(start) >= s.cfg.sendFor) {
			return
		}
		if interval > 0 {
			// Open loop: message k is due at start + (k-1)*interval; when
			// behind, send at once to catch up.
			if d := time.Until(start.Add(time.Duration(k-1) * interval)); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-ctx.Done():
					return
				}
			}
		}
		buf = s.frame(buf[:0], k)
		s.sentAt[k].Store(time.Now().UnixNano())
		_ = s.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := s.ws.WriteMessage(websocket.TextMessage, buf); err != nil {
			s.writeErr = closeReason(err)
			return
		}
		s.sent++
		if s.cfg.raw {
			s.acked.set(k)
			s.ackedN.Add(1)
		}
		if interval == 0 && !s.waitFor(ctx, k, timer) {
			return
		}
	}
}

// frame builds the frame for message k.
func (s *sender) frame(b []byte, k int) []byte {
	now := time.Now().UnixNano()
	if s.cfg.raw {
		return appendPayload(b, s.id, k, now, s.cfg.size)
	}
	b = append(b, `{"type":"send","id":`...)
	b = strconv.AppendInt(b, int64(k), 10)
	b = append(b, `,"room":"`...)
	b = append(b, s.cfg.room...) // a valid room name needs no escaping
	b = append(b, `","text":"`...)
	b = appendPayload(b, s.id, k, now, s.cfg.size)
	return append(b, `"}`...)
}

// waitFor waits for the answer to message k (its reply, or in raw mode its
// echo). It reports false when the run must stop.
func (s *sender) waitFor(ctx context.Context, k int, timer *time.Timer) bool {
	timer.Reset(s.cfg.replyTimeout)
	for {
		select {
		case a := <-s.acks:
			if a.counter == k {
				return true
			}
		case <-timer.C:
			s.writeErr = "no answer within -reply-timeout to message " + strconv.Itoa(k)
			return false
		case <-s.readDone:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// readLoop reads the sender's connection until it ends.
func (s *sender) readLoop(closing *atomic.Bool) {
	defer close(s.readDone)
	for {
		_, data, err := s.ws.ReadMessage()
		if err != nil {
			if !closing.Load() {
				s.disconnect = closeReason(err)
			}
			return
		}
		for _, line := range splitLines(data) {
			if s.cfg.raw {
				s.handleEcho(line)
			} else {
				s.handleReply(line)
			}
		}
	}
}

var (
	replyPrefix = []byte(`{"type":"reply","id":`)
	errorKey    = []byte(`"error":{"code":"`)
)

// handleReply counts the reply to a send: {"type":"reply","id":K,...}.
func (s *sender) handleReply(line []byte) {
	if !bytes.HasPrefix(line, replyPrefix) {
		if eventType(line) == "error" {
			s.errorCodes[errorCode(line)]++
		}
		return
	}
	rest := line[len(replyPrefix):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	k, err := strconv.Atoi(string(rest[:j]))
	if err != nil || k < 1 || k > s.cfg.messages {
		return // the join reply, or not ours
	}
	s.answered.Add(1)
	ok := !bytes.Contains(line, errorKey)
	if at := s.sentAt[k].Load(); ok && at > 0 {
		s.replyHist.record(time.Now().UnixNano() - at)
	}
	if ok {
		if !s.acked.has(k) {
			s.acked.set(k)
			s.ackedN.Add(1)
		}
	} else {
		s.errorCodes[errorCode(line)]++
	}
	s.notify(ack{counter: k, ok: ok})
}

// handleEcho (raw mode) notices the sender's own messages coming back.
func (s *sender) handleEcho(line []byte) {
	if p, ok := parsePayload(line); ok && p.sender == s.id {
		s.notify(ack{counter: p.counter, ok: true})
	}
}

func (s *sender) notify(a ack) {
	if s.cfg.rate > 0 {
		return // open loop: nobody waits
	}
	select {
	case s.acks <- a:
	default:
	}
}

// errorCode extracts "code" from an error reply or event.
func errorCode(line []byte) string {
	i := bytes.Index(line, []byte(`"code":"`))
	if i < 0 {
		return "unknown"
	}
	rest := line[i+len(`"code":"`):]
	if j := bytes.IndexByte(rest, '"'); j >= 0 {
		return string(rest[:j])
	}
	return "unknown"
}

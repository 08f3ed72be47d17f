package wsraw

import (
	"bufio"
	"math"
	"syscall"

	"github.com/gorilla/websocket"
)

// WebSocket framing, server to client (RFC 6455 §5.2: no mask).
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA

	maxControlPayload = 125

	// MaxFrameOut caps a batched outgoing frame; more events start another.
	MaxFrameOut = 64 << 10
)

// PingFrame is the heartbeat, with no payload.
var PingFrame = appendFrame(nil, opPing, nil)

// PongFrame answers a peer's ping.
func PongFrame(data []byte) []byte { return appendFrame(nil, opPong, data) }

// CloseFrame is a close frame with code and reason (the reason is cut to
// fit a control frame).
func CloseFrame(code int, text string) []byte {
	payload := websocket.FormatCloseMessage(code, text)
	if len(payload) > maxControlPayload {
		payload = payload[:maxControlPayload]
	}
	return appendFrame(nil, opClose, payload)
}

func appendHeader(dst []byte, op byte, n int) []byte {
	dst = append(dst, 0x80|op) // FIN: never fragmented
	switch {
	case n < 126:
		return append(dst, byte(n))
	case n <= math.MaxUint16:
		return append(dst, 126, byte(n>>8), byte(n))
	default:
		return append(dst, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func appendFrame(dst []byte, op byte, payload []byte) []byte {
	return append(appendHeader(dst, op, len(payload)), payload...)
}

// AppendFrames appends controls as they are, then events as text frames of
// newline-separated JSON, each at most MaxFrameOut bytes unless a single
// event is larger.
func AppendFrames(dst []byte, controls, events [][]byte) []byte {
	for _, frame := range controls {
		dst = append(dst, frame...)
	}
	for len(events) > 0 {
		n, size := 1, len(events[0])
		for n < len(events) && size+1+len(events[n]) <= MaxFrameOut {
			size += 1 + len(events[n])
			n++
		}
		dst = appendHeader(dst, opText, size)
		for i, event := range events[:n] {
			if i > 0 {
				dst = append(dst, '\n')
			}
			dst = append(dst, event...)
		}
		events = events[n:]
	}
	return dst
}

// Peeked is what NextControl found at the frame boundary.
type Peeked int

const (
	PeekedOther    Peeked = iota // anything else: left for gorilla to read and report
	PeekedPong                   // a whole pong, consumed
	PeekedBadClose               // a close frame with a 1-byte payload (RFC 6455 §5.5.1: a protocol error)
)

// NextControl consumes a whole client pong at the frame boundary in place
// of gorilla, which it leaves at the same boundary, so that an idle
// connection's heartbeat never wakes gorilla's read path. With wait it
// first waits until a frame starts to arrive; without, it looks only at
// what is already buffered. A close frame whose payload is 1 byte (gorilla
// takes it for no code at all) is reported, not consumed.
func NextControl(br *bufio.Reader, wait bool) Peeked {
	if !wait && br.Buffered() < 2 {
		return PeekedOther
	}
	head, err := br.Peek(2)
	if err == nil && head[0] == 0x88 && head[1] == 0x81 {
		return PeekedBadClose
	}
	// A client's pong: FIN and opcode 10, no reserved bits, masked, and a
	// payload of at most 125 bytes (RFC 6455 §5.5), after a 4-byte mask key.
	if err != nil || head[0] != 0x8A || head[1]&0x80 == 0 || head[1]&0x7F > maxControlPayload {
		return PeekedOther
	}
	n := 2 + 4 + int(head[1]&0x7F)
	if !wait && br.Buffered() < n {
		return PeekedOther
	}
	if _, err := br.Peek(n); err != nil {
		return PeekedOther
	}
	_, _ = br.Discard(n)
	return PeekedPong
}

// RawWriter writes to sockets without blocking. It is made once per
// writing goroutine so that a write allocates nothing (a closure passed to
// RawConn.Write would); one goroutine at a time may use it.
type RawWriter struct {
	b   []byte
	n   int
	err error
	do  func(fd uintptr) bool // write, bound once
}

func NewRawWriter() *RawWriter {
	w := &RawWriter{}
	w.do = w.write
	return w
}

// write is RawConn.Write's callback: it writes until done or the socket is
// full, and never waits for the socket (it always reports done).
func (w *RawWriter) write(fd uintptr) bool {
	for w.n < len(w.b) {
		m, e := syscall.Write(int(fd), w.b[w.n:])
		if m > 0 {
			w.n += m
		}
		switch e {
		case nil:
			if m <= 0 {
				return true
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true // full: the caller writes the rest, blocking
		default:
			w.err = e
			return true
		}
	}
	return true
}

// WriteNow writes b to s as far as it goes without blocking, and reports
// how much it wrote. A socket without a raw descriptor (TLS) takes nothing
// here: the caller writes it all, blocking.
func (w *RawWriter) WriteNow(s *Socket, b []byte) (int, error) {
	if s.Raw == nil {
		return 0, nil
	}
	w.b, w.n, w.err = b, 0, nil
	err := s.Raw.Write(w.do)
	n := w.n
	if err == nil {
		err = w.err
	}
	w.b = nil
	return n, err
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"time"

	"chat/internal/protocol"

	"github.com/gorilla/websocket"
)

const (
	handshakeTimeout = 10 * time.Second
	setupTimeout     = 15 * time.Second // welcome and join reply
	writeTimeout     = 5 * time.Second
)

var dialer = websocket.Dialer{
	HandshakeTimeout: handshakeTimeout,
	ReadBufferSize:   4096,
	WriteBufferSize:  4096,
}

// dial opens one WebSocket to base with the given user name.
func dial(ctx context.Context, base, name string) (*websocket.Conn, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("name", name)
	u.RawQuery = q.Encode()
	ws, resp, err := dialer.DialContext(ctx, u.String(), nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	return ws, nil
}

// readWelcome reads the first frame and checks that its first event is a
// welcome. Any events after it in the same frame are returned.
func readWelcome(ws *websocket.Conn) (rest [][]byte, err error) {
	_ = ws.SetReadDeadline(time.Now().Add(setupTimeout))
	defer func() { _ = ws.SetReadDeadline(time.Time{}) }()
	_, data, err := ws.ReadMessage()
	if err != nil {
		return nil, fmt.Errorf("reading welcome: %w", err)
	}
	lines := splitLines(data)
	if len(lines) == 0 || eventType(lines[0]) != "welcome" {
		return nil, fmt.Errorf("first event is not a welcome: %.100q", data)
	}
	return lines[1:], nil
}

// joinResult is what chatbench needs from a join reply: of the result
// (protocol.JoinResult), only the room's position, which protocol.Position
// decodes from the same fields.
type joinResult struct {
	Type   string             `json:"type"`
	ID     json.RawMessage    `json:"id"`
	Result *protocol.Position `json:"result"`
	Error  *protocol.Error    `json:"error"`
}

// join sends a join command and reads until its reply. It returns the room's
// seq at the join and every other event line read meanwhile, in order (the
// caller processes them as if they had arrived after the reply).
func join(ws *websocket.Conn, room string) (seq int64, pending [][]byte, err error) {
	cmd := fmt.Sprintf(`{"type":"join","id":"join","room":%q}`, room)
	_ = ws.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
		return 0, nil, fmt.Errorf("writing join: %w", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(setupTimeout))
	defer func() { _ = ws.SetReadDeadline(time.Time{}) }()
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return 0, nil, fmt.Errorf("waiting for the join reply: %w", err)
		}
		lines := splitLines(data)
		for i, line := range lines {
			seq, ok, err := joinReply(line)
			if err != nil {
				return 0, nil, err
			}
			if !ok {
				pending = append(pending, line)
				continue
			}
			// Events after the reply in the same frame come after it.
			return seq, append(pending, lines[i+1:]...), nil
		}
	}
}

// joinReply recognises the reply to chatbench's join command (id "join"):
// ok with the room's seq, or the refusal as an error; not ok for any other
// event.
func joinReply(line []byte) (seq int64, ok bool, err error) {
	if eventType(line) != "reply" {
		return 0, false, nil
	}
	var r joinResult
	if err := json.Unmarshal(line, &r); err != nil || string(r.ID) != `"join"` {
		return 0, false, nil
	}
	if r.Error != nil {
		return 0, false, fmt.Errorf("join refused: %s: %s", r.Error.Code, r.Error.Message)
	}
	if r.Result == nil {
		return 0, false, fmt.Errorf("join reply without result: %s", line)
	}
	return r.Result.Seq, true, nil
}

// splitLines splits a frame into its newline-separated events. The returned
// slices share data's memory.
func splitLines(data []byte) [][]byte {
	var lines [][]byte
	forEachLine(data, func(line []byte) { lines = append(lines, line) })
	return lines
}

// forEachLine calls f with each non-empty newline-separated event of a
// frame, without allocating.
func forEachLine(data []byte, f func(line []byte)) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(line) > 0 {
			f(line)
		}
	}
}

var typePrefix = []byte(`{"type":"`)

// eventType returns an event's type. The server encodes "type" first, so
// this is a prefix match; anything else falls back to decoding the JSON.
func eventType(line []byte) string { return string(eventTypeBytes(line)) }

// eventTypeBytes is eventType without a string to allocate, for the
// receivers' hot path (switch string(b) does not allocate).
func eventTypeBytes(line []byte) []byte {
	if bytes.HasPrefix(line, typePrefix) {
		rest := line[len(typePrefix):]
		if i := bytes.IndexByte(rest, '"'); i >= 0 {
			return rest[:i]
		}
	}
	var ev struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(line, &ev) != nil {
		return nil
	}
	return []byte(ev.Type)
}

var (
	seqKey  = []byte(`,"seq":`)
	textKey = []byte(`,"text":"`)
)

// parseMessage extracts seq and text from a "message" event. The fast path
// scans for `,"seq":` and then, after it (the server's field order), for
// `,"text":"` (a `,"` cannot occur inside a JSON string, where the quote
// would be escaped). chatbench's own texts have no escapes, and a text whose
// payload prefix does not parse counts as foreign anyway. Anything else is
// decoded as JSON.
func parseMessage(line []byte) (seq int64, text []byte, ok bool) {
	if i := bytes.Index(line, seqKey); i >= 0 {
		if seq, text, ok := parseMessageFrom(line[i+len(seqKey):]); ok {
			return seq, text, true
		}
	}
	var m struct {
		Seq  int64  `json:"seq"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return 0, nil, false
	}
	return m.Seq, []byte(m.Text), true
}

// parseMessageFrom is parseMessage's fast path from the seq's digits on.
func parseMessageFrom(b []byte) (seq int64, text []byte, ok bool) {
	n, rest, ok := number(b, ',')
	if k := bytes.Index(rest, textKey); ok && k >= 0 {
		t := rest[k+len(textKey):]
		if end := bytes.IndexByte(t, '"'); end >= 0 {
			return n, t[:end], true
		}
	}
	return 0, nil, false
}

// payload is what a message text carries.
type payload struct {
	sender  int
	counter int
	sentNs  int64
}

// parsePayload reads "s<sender>:<counter>:<ns>:...".
func parsePayload(text []byte) (payload, bool) {
	if len(text) < 2 || text[0] != 's' {
		return payload{}, false
	}
	text = text[1:]
	var fields [3]int64
	for i := range fields {
		n, rest, ok := number(text, ':')
		if !ok {
			return payload{}, false
		}
		fields[i], text = n, rest
	}
	return payload{sender: int(fields[0]), counter: int(fields[1]), sentNs: fields[2]}, true
}

// appendPayload appends a message text of at least size bytes.
func appendPayload(b []byte, sender, counter int, sentNs int64, size int) []byte {
	start := len(b)
	b = append(b, 's')
	b = strconv.AppendInt(b, int64(sender), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(counter), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, sentNs, 10)
	b = append(b, ':')
	for len(b)-start < size {
		b = append(b, 'x')
	}
	return b
}

// closeReason describes how a connection ended, for the disconnect report.
func closeReason(err error) string {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Text != "" {
			return fmt.Sprintf("%d %s", ce.Code, ce.Text)
		}
		return strconv.Itoa(ce.Code)
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return "error: " + s
}

// number reads a non-negative decimal number of 1 to 19 digits (every
// int64 fits) followed by end, in one pass and without allocating; it
// returns the number and what follows end.
func number(b []byte, end byte) (int64, []byte, bool) {
	var n uint64 // 19 digits cannot overflow it
	for i, c := range b {
		if d := c - '0'; d <= 9 {
			n = n*10 + uint64(d)
			continue
		}
		if c != end || i == 0 || i > 19 || n > math.MaxInt64 {
			return 0, nil, false
		}
		return int64(n), b[i+1:], true
	}
	return 0, nil, false
}

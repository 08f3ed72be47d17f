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

// joinResult is what chatbench needs from a join reply.
type joinResult struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id"`
	Result *struct {
		Epoch string `json:"epoch"`
		Seq   int64  `json:"seq"`
	} `json:"result"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
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
			if eventType(line) != "reply" {
				pending = append(pending, line)
				continue
			}
			var r joinResult
			if err := json.Unmarshal(line, &r); err != nil || string(r.ID) != `"join"` {
				pending = append(pending, line)
				continue
			}
			if r.Error != nil {
				return 0, nil, fmt.Errorf("join refused: %s: %s", r.Error.Code, r.Error.Message)
			}
			if r.Result == nil {
				return 0, nil, fmt.Errorf("join reply without result: %s", line)
			}
			// Events after the reply in the same frame come after it.
			return r.Result.Seq, append(pending, lines[i+1:]...), nil
		}
	}
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
func eventType(line []byte) string {
	if bytes.HasPrefix(line, typePrefix) {
		rest := line[len(typePrefix):]
		if i := bytes.IndexByte(rest, '"'); i >= 0 {
			return string(rest[:i])
		}
	}
	var ev struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(line, &ev) != nil {
		return ""
	}
	return ev.Type
}

var (
	seqKey  = []byte(`,"seq":`)
	textKey = []byte(`,"text":"`)
)

// parseMessage extracts seq and text from a "message" event. The fast path
// scans for `,"seq":` and `,"text":"` (a `,"` cannot occur inside a JSON
// string, where the quote would be escaped) and accepts the text only when
// it has no escapes, which chatbench's own texts never have. Anything else
// is decoded as JSON.
func parseMessage(line []byte) (seq int64, text []byte, ok bool) {
	if i := bytes.Index(line, seqKey); i >= 0 {
		rest := line[i+len(seqKey):]
		j := 0
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		n, ok := atoi(rest[:j])
		if k := bytes.Index(line, textKey); ok && k >= 0 {
			t := line[k+len(textKey):]
			if end := bytes.IndexByte(t, '"'); end >= 0 && bytes.IndexByte(t[:end], '\\') < 0 {
				return n, t[:end], true
			}
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
		j := bytes.IndexByte(text, ':')
		if j <= 0 {
			return payload{}, false
		}
		n, ok := atoi(text[:j])
		if !ok {
			return payload{}, false
		}
		fields[i] = n
		text = text[j+1:]
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

// atoi parses a non-negative decimal number without allocating: the
// receivers parse two or three per delivery, and the bench must cost far
// less than the server it measures.
func atoi(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' || n > (math.MaxInt64-int64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

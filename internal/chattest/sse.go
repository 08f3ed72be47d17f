package chattest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"
)

// SSEStream is an SSE client's stream and the address of its commands.
type SSEStream struct {
	Resp *http.Response
	// CommandsURL is where Write posts; a test may point it at another
	// replica (any replica accepts a session's commands).
	CommandsURL string
	Session     string
	Key         string
	Pings       atomic.Int64 // comment lines (heartbeats) read
}

// DialSSE opens an SSE session with query and reads the welcome event.
func (s *Server) DialSSE(t testing.TB, query string) *Client {
	t.Helper()
	c, resp, err := DialSSEURL(t, s.URL+"/sse?"+query, nil)
	if err != nil {
		t.Fatalf("open /sse?%s: %v", query, err)
	}
	if c == nil {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("open /sse?%s: HTTP %d %s", query, resp.StatusCode, body)
	}
	return c
}

// DialSSEName opens an SSE session as name.
func (s *Server) DialSSEName(t testing.TB, name string) *Client {
	t.Helper()
	return s.DialSSE(t, "name="+urlQueryEscape(name))
}

// DialSSEURL opens an SSE stream at url with header. A refusal returns a
// nil Client and the response (its body unread).
func DialSSEURL(t testing.TB, url string, header http.Header) (*Client, *http.Response, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		t.Cleanup(func() { _ = resp.Body.Close() })
		return nil, resp, nil
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("content type %q, want text/event-stream", ct)
	}
	base := url[:strings.Index(url, "/sse")]
	c := &Client{t: t, SSE: &SSEStream{Resp: resp}, events: make(chan Event, 100000), Frames: make(chan []byte, 100000), done: make(chan struct{})}
	go c.readSSE()
	t.Cleanup(func() { _ = resp.Body.Close() })
	c.Welcome = c.Next()
	if c.Welcome.Type != "welcome" {
		t.Fatalf("first event is %s, want welcome", c.Welcome)
	}
	c.SSE.Session, c.SSE.Key = c.Welcome.Str("session"), c.Welcome.Str("sessionKey")
	c.SSE.CommandsURL = base + "/api/sessions/" + c.SSE.Session + "/commands"
	return c, resp, nil
}

// readSSE parses the stream: data lines are events, a blank line ends an
// SSE event, comment lines are heartbeats. A close event records the code
// as a WebSocket close would.
func (c *Client) readSSE() {
	defer close(c.done)
	r := bufio.NewReaderSize(c.SSE.Resp.Body, 64<<10)
	var data []byte
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		line = bytes.TrimSuffix(line, []byte{'\n'})
		switch {
		case len(line) == 0:
			if len(data) > 0 {
				select {
				case c.Frames <- data:
				default:
				}
				data = nil
			}
		case line[0] == ':':
			c.SSE.Pings.Add(1)
		case bytes.HasPrefix(line, []byte("data: ")):
			event := line[len("data: "):]
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, event...)
			var m map[string]any
			if err := json.Unmarshal(event, &m); err != nil {
				c.t.Errorf("server sent invalid JSON %q: %v", event, err)
				continue
			}
			typ, _ := m["type"].(string)
			e := Event{Type: typ, Raw: append(json.RawMessage(nil), event...), m: m}
			if typ == "close" {
				c.mu.Lock()
				c.closed = &websocket.CloseError{Code: int(e.Int("code")), Text: e.Str("reason")}
				c.mu.Unlock()
			}
			c.events <- e
		default:
			c.t.Errorf("unexpected SSE line %q", line)
		}
	}
}

// Post posts body as the session's commands with key, and returns the
// status and the decoded JSON answer.
func (s *SSEStream) Post(t testing.TB, body, key string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.CommandsURL, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/plain")
	if key != "" {
		req.Header.Set("X-Session-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("post commands: %v", err)
	}
	defer resp.Body.Close()
	var m map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("post commands: HTTP %d, body %q is not JSON", resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, m
}

func (s *SSEStream) mustPost(t testing.TB, body string) {
	t.Helper()
	status, m := s.Post(t, body, s.Key)
	if status != http.StatusAccepted {
		t.Fatalf("post commands: HTTP %d %v", status, m)
	}
}

// Close ends the stream from the client's side.
func (c *Client) Close() {
	if c.SSE != nil {
		_ = c.SSE.Resp.Body.Close()
		return
	}
	_ = c.WS.Close()
}

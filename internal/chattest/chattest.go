// Package chattest runs the real service on a real listener for tests and
// speaks the protocol over real WebSockets.
package chattest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/protocol"
	"chat/internal/server"

	"github.com/gorilla/websocket"
	"github.com/zeromicro/go-zero/core/conf"
	"github.com/zeromicro/go-zero/core/logx"
)

// Timeout bounds every wait of a test.
const Timeout = 5 * time.Second

func init() { logx.Disable() }

// Server is a running service.
type Server struct {
	URL    string // http://127.0.0.1:port
	WSURL  string // ws://127.0.0.1:port/ws
	Node   *chat.Node
	Config config.Config
	http   *http.Server
}

// FreePort asks the kernel for a port that is free now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Config is the service's config with every default, on a free port.
func Config(t testing.TB) config.Config {
	t.Helper()
	var c config.Config
	// CpuThreshold 0: go-zero's load shedder answers 503 when the host's
	// CPU is busy, which a test run on two cores (-race above all) often
	// makes it; the tests check the service, not the shedder.
	yaml := fmt.Sprintf("Name: chat-test\nHost: 127.0.0.1\nPort: %d\nCpuThreshold: 0\nLog:\n  Mode: console\n  Level: severe\n  Stat: false\n", FreePort(t))
	if err := conf.LoadFromYamlBytes([]byte(yaml), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// Start runs the service with the defaults changed by opts, and stops it
// when the test ends.
func Start(t testing.TB, opts ...func(*config.Config)) *Server {
	t.Helper()
	c := Config(t)
	for _, opt := range opts {
		opt(&c)
	}
	return StartConfig(t, c)
}

// StartConfig runs the service with config c.
func StartConfig(t testing.TB, c config.Config) *Server {
	t.Helper()
	srv, ctx, err := server.New(c)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan *http.Server, 1)
	go srv.StartWithOpts(func(h *http.Server) { started <- h })
	s := &Server{
		URL:    fmt.Sprintf("http://127.0.0.1:%d", c.Port),
		WSURL:  fmt.Sprintf("ws://127.0.0.1:%d/ws", c.Port),
		Node:   ctx.Node,
		Config: c,
		http:   <-started,
	}
	t.Cleanup(s.Stop)
	deadline := time.Now().Add(Timeout)
	for {
		resp, err := http.Get(s.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// Stop drains the node and closes the listener.
func (s *Server) Stop() {
	s.Node.Shutdown()
	_ = s.http.Close()
}

// Event is one event received on a connection.
type Event struct {
	Type string
	Raw  json.RawMessage
	m    map[string]any
}

// Str, Int and Field read a top-level field.
func (e Event) Str(key string) string {
	s, _ := e.m[key].(string)
	return s
}

func (e Event) Int(key string) int64 {
	f, _ := e.m[key].(float64)
	return int64(f)
}

func (e Event) Field(key string) any { return e.m[key] }

// Decode unmarshals the event into v.
func (e Event) Decode(v any) error { return json.Unmarshal(e.Raw, v) }

func (e Event) String() string { return string(e.Raw) }

// Reply is the answer to a command.
type Reply struct {
	Result json.RawMessage
	Err    *protocol.Error
}

// Decode unmarshals the result into v.
func (r Reply) Decode(t testing.TB, v any) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("reply is an error: %+v", r.Err)
	}
	if err := json.Unmarshal(r.Result, v); err != nil {
		t.Fatalf("decode %s: %v", r.Result, err)
	}
}

// Client is a client of the chat that reads in the background: a
// WebSocket (Dial), or an SSE stream with its commands posted (DialSSE).
type Client struct {
	t       testing.TB
	WS      *websocket.Conn // nil for SSE
	SSE     *SSEStream      // nil for a WebSocket
	Welcome Event
	Frames  chan []byte // raw frames (SSE: each event's data), for tests of batching

	events chan Event
	mu     sync.Mutex
	closed *websocket.CloseError // how the server closed, once it did
	done   chan struct{}
	nextID int
	// Backlog holds events read while waiting for something else, in order.
	backlog []Event
}

// Dial connects and reads the welcome event.
func (s *Server) Dial(t testing.TB, query string) *Client {
	t.Helper()
	c, resp, err := DialURL(t, s.WSURL+"?"+query, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", query, err, status)
	}
	return c
}

// DialName connects as name.
func (s *Server) DialName(t testing.TB, name string) *Client {
	t.Helper()
	return s.Dial(t, "name="+urlQueryEscape(name))
}

func urlQueryEscape(s string) string {
	r := strings.NewReplacer("%", "%25", "&", "%26", "+", "%2B", " ", "%20", "#", "%23", "?", "%3F", "=", "%3D")
	return r.Replace(s)
}

// DialURL connects to url with header and reads the welcome event.
func DialURL(t testing.TB, url string, header http.Header) (*Client, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: Timeout}
	ws, resp, err := d.Dial(url, header)
	if err != nil {
		return nil, resp, err
	}
	c := &Client{t: t, WS: ws, events: make(chan Event, 100000), Frames: make(chan []byte, 100000), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() { _ = c.WS.Close() })
	c.Welcome = c.Next()
	if c.Welcome.Type != "welcome" {
		t.Fatalf("first event is %s, want welcome", c.Welcome)
	}
	return c, resp, nil
}

func (c *Client) read() {
	defer close(c.done)
	for {
		_, data, err := c.WS.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				c.mu.Lock()
				c.closed = ce
				c.mu.Unlock()
			}
			return
		}
		select {
		case c.Frames <- data:
		default:
		}
		for _, line := range bytes.Split(data, []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				c.t.Errorf("server sent invalid JSON %q: %v", line, err)
				continue
			}
			typ, _ := m["type"].(string)
			c.events <- Event{Type: typ, Raw: append(json.RawMessage(nil), line...), m: m}
		}
	}
}

// Next returns the next event, failing the test after Timeout.
func (c *Client) Next() Event {
	c.t.Helper()
	if len(c.backlog) > 0 {
		e := c.backlog[0]
		c.backlog = c.backlog[1:]
		return e
	}
	deadline := time.After(Timeout)
	select {
	case e := <-c.events:
		return e
	case <-c.done:
		if e, ok := c.buffered(); ok {
			return e
		}
		c.t.Fatalf("no event: %s", c.closedText())
	case <-deadline:
		c.t.Fatalf("no event within %v", Timeout)
	}
	return Event{}
}

// buffered returns an event that the reader queued, if any. Once done is
// closed the reader queues no more: an empty channel then stays empty.
func (c *Client) buffered() (Event, bool) {
	select {
	case e := <-c.events:
		return e, true
	default:
		return Event{}, false
	}
}

// closedText says how the connection ended, for a test that waited in vain.
func (c *Client) closedText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed == nil {
		return "the connection ended without a close frame"
	}
	return fmt.Sprintf("the server closed the connection with %d %q", c.closed.Code, c.closed.Text)
}

// WaitFor returns the first event of type typ that matches (nil matches
// all); other events read meanwhile stay in the backlog.
func (c *Client) WaitFor(typ string, match func(Event) bool) Event {
	c.t.Helper()
	return c.WaitForWithin(typ, match, Timeout)
}

// WaitForWithin is WaitFor failing after d instead of Timeout, for an event
// that may take as long as one of the server's own timeouts.
func (c *Client) WaitForWithin(typ string, match func(Event) bool, d time.Duration) Event {
	c.t.Helper()
	for i, e := range c.backlog {
		if e.Type == typ && (match == nil || match(e)) {
			c.backlog = append(c.backlog[:i:i], c.backlog[i+1:]...)
			return e
		}
	}
	deadline := time.After(d)
	for {
		select {
		case e := <-c.events:
			if e.Type == typ && (match == nil || match(e)) {
				return e
			}
			c.backlog = append(c.backlog, e)
		case <-c.done:
			// The connection ended: what the reader queued is all there is.
			for e, ok := c.buffered(); ok; e, ok = c.buffered() {
				if e.Type == typ && (match == nil || match(e)) {
					return e
				}
				c.backlog = append(c.backlog, e)
			}
			c.t.Fatalf("no %s event: %s; backlog %v", typ, c.closedText(), c.backlog)
			return Event{}
		case <-deadline:
			c.t.Fatalf("no %s event within %v; backlog %v", typ, d, c.backlog)
			return Event{}
		}
	}
}

// Quiet asserts that no event of type typ arrives within d.
func (c *Client) Quiet(typ string, d time.Duration) {
	c.t.Helper()
	for _, e := range c.backlog {
		if e.Type == typ {
			c.t.Fatalf("unexpected %s", e)
		}
	}
	deadline := time.After(d)
	for {
		select {
		case e := <-c.events:
			if e.Type == typ {
				c.t.Fatalf("unexpected %s", e)
			}
			c.backlog = append(c.backlog, e)
		case <-deadline:
			return
		}
	}
}

// Write sends a raw text frame (SSE: posts it, and fails the test unless
// it is accepted).
func (c *Client) Write(frame string) {
	c.t.Helper()
	if c.SSE != nil {
		c.SSE.mustPost(c.t, frame)
		return
	}
	if err := c.WS.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// Send sends a command without waiting.
func (c *Client) Send(cmd map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	c.Write(string(b))
}

// Do sends a command with a fresh id and returns its reply.
func (c *Client) Do(typ string, fields map[string]any) Reply {
	c.t.Helper()
	return c.DoWithin(typ, fields, Timeout)
}

// DoWithin is Do waiting up to d for the reply.
func (c *Client) DoWithin(typ string, fields map[string]any, d time.Duration) Reply {
	c.t.Helper()
	return c.ReplyWithin(c.Start(typ, fields), d)
}

// Start sends a command with a fresh id without waiting and returns the id,
// so that several commands can be on their way at once.
func (c *Client) Start(typ string, fields map[string]any) int {
	c.t.Helper()
	c.nextID++
	cmd := map[string]any{"type": typ, "id": c.nextID}
	for k, v := range fields {
		cmd[k] = v
	}
	c.Send(cmd)
	return c.nextID
}

// ReplyWithin returns the reply to the command with id, failing the test
// after d; other events read meanwhile stay in the backlog.
func (c *Client) ReplyWithin(id int, d time.Duration) Reply {
	c.t.Helper()
	e := c.WaitForWithin("reply", func(e Event) bool { return e.Int("id") == int64(id) && e.Field("id") != nil }, d)
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  *protocol.Error `json:"error"`
	}
	if err := e.Decode(&r); err != nil {
		c.t.Fatal(err)
	}
	return Reply{Result: r.Result, Err: r.Error}
}

// OK sends a command, fails the test on an error reply, and decodes the result into v (if not nil).
func (c *Client) OK(typ string, fields map[string]any, v any) {
	c.t.Helper()
	r := c.Do(typ, fields)
	if r.Err != nil {
		c.t.Fatalf("%s %v: error %+v", typ, fields, r.Err)
	}
	if v != nil {
		r.Decode(c.t, v)
	}
}

// Fail sends a command and asserts an error reply with code.
func (c *Client) Fail(typ string, fields map[string]any, code string) *protocol.Error {
	c.t.Helper()
	r := c.Do(typ, fields)
	if r.Err == nil || r.Err.Code != code {
		c.t.Fatalf("%s %v: got %s / %+v, want error %s", typ, fields, r.Result, r.Err, code)
	}
	return r.Err
}

// JoinResult is the result of join.
type JoinResult = protocol.JoinResult

// Join joins room and returns the result.
func (c *Client) Join(room string) JoinResult {
	c.t.Helper()
	var r JoinResult
	c.OK("join", map[string]any{"room": room}, &r)
	return r
}

// Say sends text to room and returns its seq.
func (c *Client) Say(room, text string) int64 {
	c.t.Helper()
	var r struct {
		Seq int64 `json:"seq"`
	}
	c.OK("send", map[string]any{"room": room, "text": text}, &r)
	return r.Seq
}

// Message waits for the next message event of room.
func (c *Client) Message(room string) protocol.Message {
	c.t.Helper()
	e := c.WaitFor("message", func(e Event) bool { return e.Str("room") == room })
	var m protocol.Message
	if err := e.Decode(&m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// CloseCode waits for the server to close the connection and returns the
// close code (-1 when the socket ended without a close frame).
func (c *Client) CloseCode() int {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(Timeout + 10*time.Second):
		c.t.Fatalf("connection not closed")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed == nil {
		return -1
	}
	return c.closed.Code
}

// Done is closed when the connection's reader ends.
func (c *Client) Done() <-chan struct{} { return c.done }

// Itoa is strconv.Itoa, for building names.
func Itoa(i int) string { return strconv.Itoa(i) }

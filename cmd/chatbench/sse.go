package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The SSE transport (SPEC §12, -receiver-transport sse): a receiver reads
// its events from GET /sse?name=<name>, a text/event-stream whose data:
// lines are protocol events (one per line, as the lines of a WebSocket
// frame), and posts its join to POST /api/sessions/<session>/commands with
// the welcome's sessionKey; the join reply comes on the stream. Senders stay
// on WebSocket.

const (
	transportWS  = "ws"
	transportSSE = "sse"

	// sseReadBuffer is each stream's bufio.Reader: receivers may be
	// thousands, and a message event is a few hundred bytes. A longer line
	// (a join reply with history) is gathered in the stream's own buffer.
	sseReadBuffer = 4096
	// sseConnReadBuffer is the HTTP transport's buffer under it, on each
	// connection, the one its read system calls fill. 8 KiB: with 200
	// receivers at 1,000 msg/s (SSE events of about 12 KB) the bench made
	// as many reads as over WebSocket (71,000 against 74,500), against
	// 112,000 with the transport's default 4 KiB.
	sseConnReadBuffer = 8192
	// sseMaxLine bounds one data line (the server's largest event is a join
	// reply, far below it).
	sseMaxLine = 16 << 20
	// maxCommandsReply is how much of a commands answer is read.
	maxCommandsReply = 4096
)

// sseURL derives a replica's stream endpoint from its WebSocket URL, as
// membersURL does its REST API: ws:// gives http://, wss:// https://, and
// the path is /sse (the WebSocket's path is dropped).
func sseURL(wsURL string) (string, error) {
	return replicaURL(wsURL, "/sse", "")
}

// commandsURL is where a session's commands are posted, on the replica of
// its stream (any replica would take them).
func commandsURL(streamURL, session string) string {
	base := strings.TrimSuffix(streamURL, "/sse")
	return base + "/api/sessions/" + url.PathEscape(session) + "/commands"
}

// newSSEClient is the one HTTP client of every receiver's stream and POST.
// HTTP/1.1 only, so that each stream holds a TCP connection of its own for
// its life, as a WebSocket does. The per-host caps leave room for every
// stream plus -dial-concurrency POSTs in flight (at most that many: each
// setup worker does one request at a time), and idle POST connections are
// kept for the next POSTs instead of being redialled. There is no client
// Timeout: it would cut the streams; each request is bounded on its own.
func newSSEClient(cfg *config) *http.Client {
	tr := &http.Transport{
		Proxy:                 nil, // straight to the replica, as the WebSockets
		DialContext:           (&net.Dialer{Timeout: handshakeTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{}, // no HTTP/2
		MaxIdleConns:          0,                                                      // no limit beyond the per-host one
		MaxIdleConnsPerHost:   cfg.dialConcurrency,
		MaxConnsPerHost:       cfg.receivers + cfg.dialConcurrency,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: handshakeTimeout,
		DisableCompression:    true,
		WriteBufferSize:       1024, // requests are a few hundred bytes
		ReadBufferSize:        sseConnReadBuffer,
	}
	return &http.Client{Transport: tr}
}

// sseStream is one receiver's event stream and its session.
type sseStream struct {
	url         string // the stream's URL (no query)
	commandsURL string
	session     string
	key         string // X-Session-Key

	body   io.ReadCloser
	cancel context.CancelFunc // ends the request: the stream's connection is closed
	clock  stampReader        // under br: when the last bytes arrived
	br     *bufio.Reader
	long   []byte // a data line longer than br's buffer
}

// stampReader records when each read from the stream returned: the receive
// time of the lines it brought (as the receive time of a WebSocket frame
// is taken when the frame has been read).
type stampReader struct {
	r   io.Reader
	now int64 // UnixNano
}

func (s *stampReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.now = time.Now().UnixNano()
	return n, err
}

// newSSEReader reads an event stream from body with a buffer of size bytes.
func newSSEReader(body io.ReadCloser, size int) *sseStream {
	s := &sseStream{body: body, cancel: func() {}}
	s.clock.r = body
	s.br = bufio.NewReaderSize(&s.clock, size)
	return s
}

var dataField = []byte("data:")

// next returns the payload of the next data: line, one protocol event;
// comment lines (heartbeats), blank lines (the end of an SSE event) and
// other fields are skipped. The slice is valid until the next call. At the
// end of the stream it returns the read's error (io.EOF for a clean end).
func (s *sseStream) next() ([]byte, error) {
	for {
		line, err := s.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			line, err = s.readLong(line)
		}
		if err != nil {
			return nil, err // a line cut by the end of the stream is dropped
		}
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if !bytes.HasPrefix(line, dataField) {
			continue
		}
		line = line[len(dataField):]
		if len(line) > 0 && line[0] == ' ' {
			line = line[1:]
		}
		if len(line) > 0 {
			return line, nil
		}
	}
}

// readLong gathers a line longer than the reader's buffer.
func (s *sseStream) readLong(first []byte) ([]byte, error) {
	s.long = append(s.long[:0], first...)
	for {
		more, err := s.br.ReadSlice('\n')
		s.long = append(s.long, more...)
		if err != bufio.ErrBufferFull {
			return s.long, err
		}
		if len(s.long) > sseMaxLine {
			return nil, fmt.Errorf("an SSE line over %d bytes", sseMaxLine)
		}
	}
}

// close ends the stream from the bench's side: the server sees its client
// go away and ends the session, as for a closed WebSocket.
func (s *sseStream) close() {
	s.cancel()
	_ = s.body.Close()
}

// welcomeEvent is what chatbench needs from an SSE welcome.
type welcomeEvent struct {
	Type       string `json:"type"`
	Session    string `json:"session"`
	SessionKey string `json:"sessionKey"`
}

// dialSSE opens a stream on the replica at streamURL as name and reads its
// welcome. The stream is not tied to ctx once it is set up (a WebSocket is
// not either): the bench closes it.
func dialSSE(ctx context.Context, client *http.Client, streamURL, name string) (*sseStream, error) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel) // the run's end aborts the setup
	defer stop()
	timer := time.AfterFunc(setupTimeout, cancel) // the welcome's deadline
	defer timer.Stop()

	req, err := http.NewRequestWithContext(sctx, http.MethodGet, streamURL+"?name="+url.QueryEscape(name), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		_ = resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		_ = resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("content type %q, want text/event-stream", ct)
	}
	s := newSSEReader(resp.Body, sseReadBuffer)
	s.url, s.cancel = streamURL, cancel
	line, err := s.next()
	if err != nil {
		s.close()
		return nil, fmt.Errorf("reading welcome: %w", setupErr(sctx, err))
	}
	var w welcomeEvent
	if json.Unmarshal(line, &w) != nil || w.Type != "welcome" || w.Session == "" || w.SessionKey == "" {
		s.close()
		return nil, fmt.Errorf("first event is not a welcome with a session and key: %.100q", line)
	}
	if !timer.Stop() {
		s.close()
		return nil, errors.New("reading welcome: timeout")
	}
	s.session, s.key = w.Session, w.SessionKey
	s.commandsURL = commandsURL(streamURL, w.Session)
	return s, nil
}

// setupErr names a read cut by the setup's deadline or the run's end.
func setupErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("timeout or the run's end (%w)", err)
	}
	return err
}

// post posts a frame of commands to the session and checks the 202.
func (s *sseStream) post(ctx context.Context, client *http.Client, frame string) error {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.commandsURL, strings.NewReader(frame))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("X-Session-Key", s.key)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	// Read the answer to its end, so that the connection is reused.
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxCommandsReply))
	_ = resp.Body.Close()
	if err != nil {
		return fmt.Errorf("reading the commands answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("commands: HTTP %d: %.100s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// joinSSE posts a join and reads the stream until its reply, as join does
// on a WebSocket: it returns the room's seq at the join and every other
// event line read meanwhile, copied, in order. Lines after the reply stay
// in the stream's reader for the read loop.
func joinSSE(ctx context.Context, client *http.Client, s *sseStream, room string) (seq int64, pending [][]byte, err error) {
	if err := s.post(ctx, client, fmt.Sprintf(`{"type":"join","id":"join","room":%q}`, room)); err != nil {
		return 0, nil, fmt.Errorf("posting join: %w", err)
	}
	timer := time.AfterFunc(setupTimeout, s.cancel) // the reply's deadline: the stream is dropped
	defer timer.Stop()
	for {
		line, err := s.next()
		if err != nil {
			return 0, nil, fmt.Errorf("waiting for the join reply: %w", err)
		}
		seq, ok, err := joinReply(line)
		if err != nil {
			return 0, nil, err
		}
		if !ok {
			pending = append(pending, bytes.Clone(line))
			continue
		}
		if !timer.Stop() {
			return 0, nil, errors.New("waiting for the join reply: timeout")
		}
		return seq, pending, nil
	}
}

// closeEventReason reads a stream's close event,
// {"type":"close","code":4008,"reason":"slow consumer"}, into the form
// closeReason gives a WebSocket's close ("4008 slow consumer").
func closeEventReason(line []byte) string {
	var c struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	}
	if json.Unmarshal(line, &c) != nil || c.Code == 0 {
		return "close event: " + string(line[:min(len(line), 60)])
	}
	if c.Reason != "" {
		return fmt.Sprintf("%d %s", c.Code, c.Reason)
	}
	return fmt.Sprint(c.Code)
}

// streamEndReason describes how a stream ended without a close event.
func streamEndReason(err error) string {
	if errors.Is(err, io.EOF) {
		return "stream ended without a close event"
	}
	return closeReason(err)
}

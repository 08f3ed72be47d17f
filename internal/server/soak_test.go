package server_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"

	"github.com/gorilla/websocket"
)

// The soak of SPEC §11: cycle after cycle, connections come, chat and go
// by every way a connection can end, and the process's goroutines, open
// descriptors and heap come back to where they were. The clients live in
// the same process as the service, so whatever either side leaves behind
// is counted: a connection whose goroutine never ended would add
// soakCycles×soakClients goroutines, far beyond the slack.
const (
	soakCycles  = 15
	soakClients = 50 // per cycle
	soakSends   = 3  // messages each client sends per cycle
	soakAPIKey  = "soak-key"

	// The slack absorbs what the runtime and go-zero do by themselves; a
	// leak of one goroutine or descriptor per connection, or even per
	// cycle, is beyond it.
	soakGoroutineSlack  = 10
	soakDescriptorSlack = 5
	soakHeapSlack       = 4 << 20
	// soakSettleWithin bounds how long the service may take to finish closing
	// once the last client has gone; it is generous for a loaded machine.
	soakSettleWithin = 20 * time.Second
)

var soakRooms = [2]string{"soak-a", "soak-b"}

// TestSoakLeavesGoroutinesDescriptorsAndHeapFlat runs soakCycles cycles of
// soakClients connections after a warm-up cycle, then waits for the
// process to come back to the warm-up's figures.
func TestSoakLeavesGoroutinesDescriptorsAndHeapFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: many connections over several seconds")
	}
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Skipf("no /proc/self/fd to count descriptors: %v", err)
	}
	s := chattest.Start(t, func(c *config.Config) { c.Chat.ApiKey = soakAPIKey })
	// The kicks' keep-alive connections are this client's, so that they
	// can be closed before each measurement.
	admin := &http.Client{Transport: &http.Transport{}, Timeout: chattest.Timeout}
	start := time.Now()

	// The warm-up brings every lazily started part of the service (and
	// of the test's own HTTP client) to its steady state, and fills the
	// rooms' history, which is bounded and not a leak.
	soakCycle(t, s, admin, nil)
	base := settledSoakUsage(t, s, admin)
	t.Logf("baseline after the warm-up: %v", base)

	var open soakUsage
	for i := range soakCycles {
		var whileOpen func()
		if i == 0 {
			whileOpen = func() { open = measureSoakUsage() }
		}
		soakCycle(t, s, admin, whileOpen)
	}
	t.Logf("with %d clients connected: %v (heap %+.1f KiB a connection)", soakClients, open,
		float64(int64(open.heap)-int64(base.heap))/1024/soakClients)

	admin.CloseIdleConnections()
	deadline := time.Now().Add(soakSettleWithin)
	for {
		after := measureSoakUsage()
		if after.goroutines <= base.goroutines+soakGoroutineSlack &&
			after.descriptors <= base.descriptors+soakDescriptorSlack &&
			after.heap <= base.heap+soakHeapSlack {
			t.Logf("after %d cycles of %d connections: %v (%v in all)", soakCycles, soakClients, after, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d cycles of %d connections and %v: %v; baseline %v, allowed +%d goroutines, +%d descriptors, +%d KiB heap",
				soakCycles, soakClients, soakSettleWithin, after, base, soakGoroutineSlack, soakDescriptorSlack, soakHeapSlack>>10)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// soakUsage is what a leak makes grow.
type soakUsage struct {
	goroutines  int
	descriptors int
	heap        uint64 // bytes in in-use spans after a full collection
}

func (u soakUsage) String() string {
	return fmt.Sprintf("%d goroutines, %d descriptors, heap %.2f MiB", u.goroutines, u.descriptors, float64(u.heap)/(1<<20))
}

// measureSoakUsage collects twice, so that sync.Pool's victim cache is empty
// too, and reads the heap once the sweep is done (runtime.GC waits for it).
func measureSoakUsage() soakUsage {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fds, _ := os.ReadDir("/proc/self/fd")
	return soakUsage{goroutines: runtime.NumGoroutine(), descriptors: len(fds), heap: m.HeapInuse}
}

// settledSoakUsage waits until the service holds no connection and the
// goroutine and descriptor counts stop moving, then measures.
func settledSoakUsage(t *testing.T, s *chattest.Server, admin *http.Client) soakUsage {
	t.Helper()
	admin.CloseIdleConnections()
	deadline := time.Now().Add(soakSettleWithin)
	for s.Node.Stats().Connections > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still registered", s.Node.Stats().Connections)
		}
		time.Sleep(50 * time.Millisecond)
	}
	prev := measureSoakUsage()
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		u := measureSoakUsage()
		if u.goroutines == prev.goroutines && u.descriptors == prev.descriptors {
			return u
		}
		prev = u
	}
	return prev
}

// soakEnding is how a soak connection ends: half by the client, half by the
// server.
type soakEnding int

const (
	closesCleanly  soakEnding = iota // the client's close frame, echoed: 1000
	dropsSocket                      // the client closes the socket without a close frame
	isKicked                         // DELETE /api/users/:user/connections: 4003
	breaksProtocol                   // a binary frame: the server closes with 1003
	soakEndings
)

// soakCycle connects soakClients clients at once, each of which joins both
// rooms and sends soakSends messages, then ends them all. whileOpen, if
// set, runs while they are all connected.
func soakCycle(t *testing.T, s *chattest.Server, admin *http.Client, whileOpen func()) {
	t.Helper()
	conns := make([]*soakConn, soakClients)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			// Half the clients read as they go and check that each of
			// their messages reaches them; the others write and read
			// nothing until they end, so the server queues for them.
			c, err := dialSoak(s, fmt.Sprintf("soak%d", i), (i/int(soakEndings))%2 == 0)
			if err == nil {
				conns[i] = c
				err = c.chat()
			}
			if err != nil {
				t.Errorf("client %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if whileOpen != nil && !t.Failed() {
		whileOpen()
	}
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Go(func() {
			if err := c.end(soakEnding(i%int(soakEndings)), s, admin); err != nil {
				t.Errorf("client %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// soakConn is one soak client. Its reader goroutine, once started, is the
// only reader of ws; data frames are written by one goroutine at a time (the
// one that chats, then, after soakCycle's wait, the one that ends it).
type soakConn struct {
	ws      *websocket.Conn
	user    string
	reading bool           // reads while it chats; otherwise only once it ends
	replies chan soakReply // replies, in order
	echoes  chan int64     // seqs of this user's own messages, in order
	done    chan struct{}
	code    int // the close code the server sent (-1: none); set before done closes
}

type soakReply struct {
	Result struct {
		Seq int64 `json:"seq"`
	} `json:"result"`
	Error *protocol.Error `json:"error"`
}

// dialSoak connects as user and reads the welcome.
func dialSoak(s *chattest.Server, user string, reading bool) (*soakConn, error) {
	d := websocket.Dialer{HandshakeTimeout: chattest.Timeout}
	var ws *websocket.Conn
	err := whileShed(func() (status int, err error) {
		var resp *http.Response
		ws, resp, err = d.Dial(s.WSURL+"?name="+user, nil)
		if resp != nil {
			status = resp.StatusCode
		}
		return status, err
	})
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(chattest.Timeout))
	_, data, err := ws.ReadMessage()
	var welcome struct{ Type string }
	if err == nil {
		first, _, _ := bytes.Cut(data, []byte{'\n'})
		err = json.Unmarshal(first, &welcome)
	}
	if err != nil || welcome.Type != "welcome" {
		_ = ws.Close()
		return nil, fmt.Errorf("no welcome: %q, %v", data, err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	c := &soakConn{ws: ws, user: user, reading: reading,
		replies: make(chan soakReply, 2*soakSends), echoes: make(chan int64, soakSends), done: make(chan struct{})}
	if reading {
		go c.read()
	}
	return c, nil
}

// read keeps the replies and this user's own messages, and drops the rest.
// Its channels never block it: a client that reads late ignores them.
func (c *soakConn) read() {
	defer close(c.done)
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.code = -1
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.code = ce.Code
			}
			return
		}
		for line := range bytes.SplitSeq(data, []byte{'\n'}) {
			var e struct {
				Type string `json:"type"`
				From string `json:"from"`
				Seq  int64  `json:"seq"`
				soakReply
			}
			if json.Unmarshal(line, &e) != nil {
				continue
			}
			switch {
			case e.Type == "reply":
				select {
				case c.replies <- e.soakReply:
				default:
				}
			case e.Type == "message" && e.From == c.user:
				select {
				case c.echoes <- e.Seq:
				default:
				}
			}
		}
	}
}

// do sends a command; a reading client waits for its reply (one command
// is in flight at a time, so the next reply is its own).
func (c *soakConn) do(cmd map[string]any) (soakReply, error) {
	_ = c.ws.SetWriteDeadline(time.Now().Add(chattest.Timeout))
	if err := c.ws.WriteJSON(cmd); err != nil {
		return soakReply{}, fmt.Errorf("%s: %w", cmd["type"], err)
	}
	if !c.reading {
		return soakReply{}, nil
	}
	select {
	case r := <-c.replies:
		if r.Error != nil {
			return r, fmt.Errorf("%s: %v", cmd["type"], r.Error)
		}
		return r, nil
	case <-c.done:
		return soakReply{}, fmt.Errorf("%s: closed with %d", cmd["type"], c.code)
	case <-time.After(chattest.Timeout):
		return soakReply{}, fmt.Errorf("%s: no reply within %v", cmd["type"], chattest.Timeout)
	}
}

// chat joins both rooms and sends soakSends messages; a reading client
// waits for each of them to come back to it.
func (c *soakConn) chat() error {
	id := 0
	for _, room := range soakRooms {
		// A join that keeps racing the room's messages answers
		// unavailable ("too busy to join; try again"): retry, as a client
		// should.
		for attempt := 1; ; attempt++ {
			id++
			r, err := c.do(map[string]any{"type": "join", "id": id, "room": room})
			if err == nil {
				break
			}
			if r.Error == nil || r.Error.Code != protocol.CodeUnavailable || attempt == 5 {
				return err
			}
			time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
		}
	}
	for i := range soakSends {
		id++
		r, err := c.do(map[string]any{"type": "send", "id": id, "room": soakRooms[i%len(soakRooms)], "text": "soak " + c.user})
		if err != nil || !c.reading {
			return err
		}
		select {
		case seq := <-c.echoes:
			if seq != r.Result.Seq {
				return fmt.Errorf("own message came back with seq %d, want %d", seq, r.Result.Seq)
			}
		case <-time.After(chattest.Timeout):
			return fmt.Errorf("own message %d never came back", r.Result.Seq)
		}
	}
	return nil
}

// end ends the connection the way e says and waits until its reader has
// seen the end; the socket is closed whatever happens.
func (c *soakConn) end(e soakEnding, s *chattest.Server, admin *http.Client) error {
	defer c.ws.Close()
	if e == dropsSocket {
		_ = c.ws.Close()
		if c.reading {
			<-c.done
		}
		return nil
	}
	if !c.reading {
		go c.read()
	}
	want := 0
	switch e {
	case closesCleanly:
		want = websocket.CloseNormalClosure
		msg := websocket.FormatCloseMessage(want, "")
		if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(chattest.Timeout)); err != nil {
			return fmt.Errorf("close: %w", err)
		}
	case isKicked:
		want = protocol.CloseKicked
		if err := soakKick(s, admin, c.user); err != nil {
			return err
		}
	case breaksProtocol:
		want = websocket.CloseUnsupportedData
		_ = c.ws.SetWriteDeadline(time.Now().Add(chattest.Timeout))
		if err := c.ws.WriteMessage(websocket.BinaryMessage, []byte("soak")); err != nil {
			return fmt.Errorf("binary frame: %w", err)
		}
	}
	// The server flushes what it queued, closes, and waits up to its
	// close grace for the echo (gorilla's close handler sends it).
	select {
	case <-c.done:
	case <-time.After(2 * chattest.Timeout):
		return fmt.Errorf("not closed within %v", 2*chattest.Timeout)
	}
	if c.code != want {
		return fmt.Errorf("closed with %d, want %d", c.code, want)
	}
	return nil
}

// soakKick closes the user's connections through the admin API.
func soakKick(s *chattest.Server, admin *http.Client, user string) error {
	return whileShed(func() (int, error) {
		req, err := http.NewRequest(http.MethodDelete, s.URL+"/api/users/"+user+"/connections", nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("X-API-Key", soakAPIKey)
		resp, err := admin.Do(req)
		if err != nil {
			return 0, fmt.Errorf("kick: %w", err)
		}
		defer resp.Body.Close()
		var got struct{ Closed int }
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK || got.Closed < 1 {
			return resp.StatusCode, fmt.Errorf("kick %s: HTTP %d, %+v, %v", user, resp.StatusCode, got, err)
		}
		return resp.StatusCode, nil
	})
}

// whileShed retries a request that go-zero's load shedding refused with
// 503 (it does when the CPU is saturated, as it may be on a loaded test
// machine), for up to chattest.Timeout.
func whileShed(request func() (status int, err error)) error {
	deadline := time.Now().Add(chattest.Timeout)
	for {
		status, err := request()
		if err == nil || status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

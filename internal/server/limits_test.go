package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"

	"github.com/gorilla/websocket"
)

// rawDial connects without a background reader, so the test decides when
// (and whether) the client reads.
func rawDial(t *testing.T, s *chattest.Server, name string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(s.WSURL+"?name="+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

// closeCodeOf reads until the connection fails and returns its close code.
func closeCodeOf(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce.Code
			}
			t.Fatalf("connection ended without a close frame: %v", err)
		}
	}
}

func TestProtocolViolationsCloseTheConnection(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxFrameBytes = 1024 })
	for _, tc := range []struct {
		name string
		kind int
		data []byte
		code int
	}{
		{"frame over MaxFrameBytes", websocket.TextMessage, []byte(`{"type":"rooms","pad":"` + strings.Repeat("x", 1100) + `"}`), websocket.CloseMessageTooBig},
		{"binary frame", websocket.BinaryMessage, []byte(`{"type":"rooms"}`), websocket.CloseUnsupportedData},
		{"invalid UTF-8", websocket.TextMessage, []byte("{\"type\":\"send\",\"text\":\"\xff\xfe\"}"), websocket.CloseInvalidFramePayloadData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := rawDial(t, s, "alice")
			if err := ws.WriteMessage(tc.kind, tc.data); err != nil {
				t.Fatal(err)
			}
			if code := closeCodeOf(t, ws); code != tc.code {
				t.Fatalf("closed with %d, want %d", code, tc.code)
			}
		})
	}
	t.Run("a frame of exactly MaxFrameBytes is accepted", func(t *testing.T) {
		c := s.DialName(t, "bob")
		frame := `{"type":"rooms","id":1,"pad":"`
		frame += strings.Repeat("x", 1024-len(frame)-2) + `"}`
		c.Write(frame)
		if e := c.WaitFor("reply", nil); e.Field("error") != nil {
			t.Fatalf("got %s", e)
		}
	})
}

// escapeAll writes s as a JSON string body the way an encoder that escapes
// every non-ASCII character does (Python's json.dumps): a character beyond
// the BMP becomes a \uXXXX surrogate pair, 12 bytes.
func escapeAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x80 {
			b.WriteRune(r)
			continue
		}
		for _, u := range utf16.Encode([]rune{r}) {
			fmt.Fprintf(&b, "\\u%04x", u)
		}
	}
	return b.String()
}

// The longest valid send, encoded as wastefully as JSON allows (every
// character an escaped surrogate pair; the longest room and key), fits the
// default Chat.MaxFrameBytes; one byte more than the default is still 1009.
func TestLongestValidSendInAnyEncodingFitsTheDefaultFrame(t *testing.T) {
	s := chattest.Start(t)
	max := s.Config.Chat.MaxFrameBytes
	room := strings.Repeat("r", 64)
	c := s.DialName(t, "alice")
	c.Join(room)
	text := strings.Repeat("😀", s.Config.Chat.MaxText)
	frame := `{"type":"send","id":1,"room":"` + room + `","key":"` + strings.Repeat("k", protocol.MaxKeyChars) +
		`","text":"` + escapeAll(text) + `"}`
	if len(frame) > max {
		t.Fatalf("the longest send is %d bytes, over the default MaxFrameBytes %d", len(frame), max)
	}
	c.Write(frame)
	if e := c.WaitFor("reply", nil); e.Field("error") != nil {
		t.Fatalf("the longest send was refused: %s", e)
	}
	if m := c.Message(room); m.Text != text {
		t.Fatalf("text of %d characters came back as %d", len([]rune(text)), len([]rune(m.Text)))
	}

	over := rawDial(t, s, "bob")
	pad := `{"type":"rooms","pad":"`
	if err := over.WriteMessage(websocket.TextMessage, []byte(pad+strings.Repeat("x", max+1-len(pad)-2)+`"}`)); err != nil {
		t.Fatal(err)
	}
	if code := closeCodeOf(t, over); code != websocket.CloseMessageTooBig {
		t.Fatalf("a frame of MaxFrameBytes+1 closed with %d, want 1009", code)
	}
}

func TestTooManyRooms(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxRooms = 2 })
	c := s.DialName(t, "alice")
	c.Join("a")
	c.Join("b")
	c.Fail("join", map[string]any{"room": "c"}, protocol.CodeTooManyRooms)
	c.Join("a") // joining a room again is not one more room
	c.OK("leave", map[string]any{"room": "b"}, nil)
	c.Join("c")
}

func TestBadRoomNames(t *testing.T) {
	s := chattest.Start(t, fast)
	c := s.DialName(t, "alice")
	for _, room := range []string{"", "-lead", "_lead", ".lead", "sp ace", "slash/", "ü", strings.Repeat("a", 65)} {
		code := protocol.CodeInvalidRoom
		c.Fail("join", map[string]any{"room": room}, code)
	}
	for _, room := range []string{"a", "A.b_c-9", strings.Repeat("z", 64)} {
		c.Join(room)
	}
}

func TestRateLimitDropsCommandsOverTheBucket(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) {
		c.Chat.RateLimit = 1
		c.Chat.RateBurst = 3
	})
	c := s.DialName(t, "alice")
	c.Write(`{"type":"join","id":1,"room":"r"}` + "\n" +
		`{"type":"send","id":2,"room":"r","text":"a"}` + "\n" +
		`{"type":"send","id":3,"room":"r","text":"b"}` + "\n" +
		`{"type":"send","id":4,"room":"r","text":"c"}`)
	var codes []string
	for i := 0; i < 4; i++ {
		e := c.WaitFor("reply", nil)
		code := ""
		if m, ok := e.Field("error").(map[string]any); ok {
			code, _ = m["code"].(string)
		}
		codes = append(codes, code)
	}
	if fmt.Sprint(codes) != fmt.Sprint([]string{"", "", "", protocol.CodeRateLimited}) {
		t.Fatalf("codes %q", codes)
	}
	// The dropped send published nothing.
	c.Message("r")
	c.Message("r")
	c.Quiet("message", 200*time.Millisecond)
	// The bucket refills at RateLimit per second.
	time.Sleep(1100 * time.Millisecond)
	c.Say("r", "later")
}

func TestSlowConsumerIsClosedWith4008AndDoesNotDelayOthers(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) {
		c.Chat.MaxText = 16000
		c.Chat.MaxFrameBytes = 32 << 10
	})
	slow := rawDial(t, s, "slow")
	if err := slow.WriteJSON(map[string]any{"type": "join", "room": "r"}); err != nil {
		t.Fatal(err)
	}
	reader := s.DialName(t, "reader")
	reader.Join("r")
	sender := s.DialName(t, "sender")
	sender.Join("r")
	// Far more than the socket buffers and the 1 MiB queue hold: the slow
	// client, which reads nothing, must overflow. The sender waits for each
	// reply, as a client within its rate limit would; the reader reads all
	// the while.
	const count = 1500
	text := strings.Repeat("x", 15000)
	// Once it is over its limit the slow client reads again, so that its
	// writer, stuck on the full socket, gets to write the close frame before
	// its write deadline (10 s) gives up on it, however slow the host.
	closed := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(60 * time.Second)
		for s.Node.Stats().SlowConsumers == 0 {
			if time.Now().After(deadline) {
				closed <- fmt.Errorf("no slow consumer within 60s")
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		_ = slow.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			if _, _, err := slow.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	start := time.Now()
	for i := 0; i < count; i++ {
		sender.Say("r", text)
	}
	for want := int64(1); want <= count; want++ {
		if m := reader.Message("r"); m.Seq != want {
			t.Fatalf("reader got seq %d, want %d", m.Seq, want)
		}
	}
	t.Logf("reader got %d messages of %d bytes in %v", count, len(text), time.Since(start))
	err := <-closed
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != protocol.CloseSlowConsumer {
		t.Fatalf("slow consumer ended with %v, want close 4008", err)
	}
	if n := s.Node.Stats().SlowConsumers; n != 1 {
		t.Fatalf("SlowConsumers = %d", n)
	}
}

func TestLargeJoinReplyIsAdmittedToAnEmptyQueue(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) {
		c.Chat.MaxQueueBytes = 4 << 10
		c.Chat.MaxText = 1000
		c.Chat.ApiKey = "key"
	})
	for i := 0; i < 60; i++ {
		postJSON(t, s, "/api/rooms/r/messages", "key", map[string]any{"text": strings.Repeat("y", 1000)}, http.StatusOK)
	}
	c := s.DialName(t, "bob")
	if j := c.Join("r"); len(j.History) != 50 { // ~50 KB in one reply, over the 4 KB queue
		t.Fatalf("history %d", len(j.History))
	}
}

// postJSON posts body to path with an API key and checks the status.
func postJSON(t *testing.T, s *chattest.Server, path, key string, body any, status int) []byte {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.URL+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("POST %s: %d %s, want %d", path, resp.StatusCode, out, status)
	}
	return out
}

// The heartbeat keeps a client that answers pings and closes one that does
// not. Nothing here is timed against the clock: the silent client, which
// connected after the live one, is closed for its silence while the live
// one, older, is still served. The pong timeout leaves a loaded machine
// nearly two seconds to answer a ping.
func TestHeartbeatClosesTheSilentAndKeepsTheLive(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) {
		c.Chat.PingInterval = 200 * time.Millisecond
		c.Chat.PongTimeout = 2 * time.Second
	})
	live := s.DialName(t, "live") // its reader answers pings
	silent := rawDial(t, s, "silent")
	// The silent client reads nothing, so it answers no ping; the server
	// must close it on its own. Its count is watched, not its socket (a
	// read would answer the pings).
	deadline := time.Now().Add(60 * time.Second)
	for s.Node.Stats().Connections > 1 {
		if time.Now().After(deadline) {
			t.Fatal("the silent client was not closed within 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	live.OK("rooms", nil, nil)
	if got := live.Welcome.Str("user"); got != "live" {
		t.Fatalf("welcome %s", live.Welcome)
	}
	_ = silent.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		if _, _, err := silent.ReadMessage(); err != nil {
			return // closed by the server, as the count said
		}
	}
}

func TestShutdownClosesEveryConnectionWith1001(t *testing.T) {
	s := chattest.Start(t)
	a := s.DialName(t, "alice")
	b := s.DialName(t, "bob")
	a.Join("r")
	b.Join("r")
	seq := a.Say("r", "last words")
	s.Node.Shutdown()
	if m := b.Message("r"); m.Seq != seq {
		t.Fatalf("queued message lost: %+v", m)
	}
	for _, c := range []*chattest.Client{a, b} {
		if code := c.CloseCode(); code != websocket.CloseGoingAway {
			t.Fatalf("closed with %d, want 1001", code)
		}
	}
	for _, path := range []string{"/readyz", "/ws?name=carol"} {
		resp, err := http.Get(s.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s after shutdown: %d", path, resp.StatusCode)
		}
	}
}

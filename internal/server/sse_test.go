package server_test

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"chat/internal/chat"
	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"

	"github.com/golang-jwt/jwt/v4"
)

// brokers runs a test on one node with the memory broker and on two
// replicas sharing Redis; the test gets the replica that holds the
// sessions and the one that takes their commands (the same node in memory).
func brokers(t *testing.T, test func(t *testing.T, home, other *chattest.Server), opts ...func(*config.Config)) {
	t.Run("memory", func(t *testing.T) {
		s := chattest.Start(t, append([]func(*config.Config){fast}, opts...)...)
		test(t, s, s)
	})
	t.Run("redis", func(t *testing.T) {
		nodes := cluster(t, 2, opts...)
		test(t, nodes[0], nodes[1])
	})
}

// An SSE session speaks the protocol of a WebSocket: the welcome (with its
// session address and secret), joins, sends and their replies, messages
// from a WebSocket member each once and in order, typing, presence, and
// direct messages both ways. On Redis its commands are posted to the
// replica that does not hold it.
func TestSSESessionChatsWithAWebSocketClient(t *testing.T) {
	brokers(t, func(t *testing.T, home, other *chattest.Server) {
		sse := home.DialSSEName(t, "ann")
		sse.SSE.CommandsURL = strings.Replace(sse.SSE.CommandsURL, home.URL, other.URL, 1)
		w := sse.Welcome
		if w.Str("session") == "" || w.Str("session") != w.Str("client") || w.Str("user") != "ann" {
			t.Fatalf("welcome %s: want session = client and user ann", w)
		}
		if key := w.Str("sessionKey"); len(key) < 32 {
			t.Fatalf("sessionKey %q is shorter than 128 bits of hex", key)
		}
		if w.Field("limits") == nil {
			t.Fatalf("welcome %s has no limits", w)
		}
		ws := other.DialName(t, "bob")
		ws.Join("lobby")
		joined := sse.Join("lobby")
		if len(joined.Members) != 2 {
			t.Fatalf("join reply members %+v, want ann and bob", joined.Members)
		}
		ws.WaitFor("joined", func(e chattest.Event) bool { return e.Str("user") == "ann" })
		if seq := sse.Say("lobby", "hello from sse"); seq != 1 {
			t.Fatalf("seq %d, want 1", seq)
		}
		if m := ws.Message("lobby"); m.Text != "hello from sse" || m.From != "ann" {
			t.Fatalf("bob got %+v", m)
		}
		for i := 2; i <= 30; i++ {
			ws.Send(map[string]any{"type": "send", "room": "lobby", "text": fmt.Sprint("n", i)})
		}
		for want := int64(1); want <= 30; want++ {
			if m := sse.Message("lobby"); m.Seq != want {
				t.Fatalf("ann got seq %d, want %d", m.Seq, want)
			}
		}
		ws.OK("typing", map[string]any{"room": "lobby"}, nil)
		if e := sse.WaitFor("typing", nil); e.Str("user") != "bob" {
			t.Fatalf("typing %s", e)
		}
		ws.OK("direct", map[string]any{"to": "ann", "text": "psst"}, nil)
		if e := sse.WaitFor("direct", nil); e.Str("text") != "psst" {
			t.Fatalf("direct %s", e)
		}
		sse.OK("direct", map[string]any{"to": "bob", "text": "back"}, nil)
		if e := ws.WaitFor("direct", nil); e.Str("from") != "ann" {
			t.Fatalf("direct %s", e)
		}
		// A failed command without id answers with an error event on the stream.
		sse.Write(`{"type":"send","room":"nowhere","text":"x"}` + "\n" + `{"type":"nope"}`)
		if e := sse.WaitFor("error", nil); !strings.Contains(e.String(), protocol.CodeNotMember) {
			t.Fatalf("first error %s, want not_member", e)
		}
		if e := sse.WaitFor("error", nil); !strings.Contains(e.String(), protocol.CodeUnknownType) {
			t.Fatalf("second error %s, want unknown_type", e)
		}
		// Closing the stream ends the session: it leaves its rooms.
		sse.Close()
		if e := ws.WaitFor("left", nil); e.Str("user") != "ann" {
			t.Fatalf("bob saw %s", e)
		}
	})
}

// Commands posted one request after another run in order, whichever
// replica takes them; the body's count comes back as accepted.
func TestSSECommandsRunInOrderAndAreCounted(t *testing.T) {
	brokers(t, func(t *testing.T, home, other *chattest.Server) {
		sse := home.DialSSEName(t, "ann")
		sse.SSE.CommandsURL = strings.Replace(sse.SSE.CommandsURL, home.URL, other.URL, 1)
		sse.Join("lobby")
		for i := 0; i < 20; i++ {
			body := fmt.Sprintf(`{"type":"send","id":"a%d","room":"lobby","text":"%d-1"}`+"\n\n"+
				`{"type":"send","id":"b%d","room":"lobby","text":"%d-2"}`, i, i, i, i)
			status, m := sse.SSE.Post(t, body, sse.SSE.Key)
			if status != http.StatusAccepted || m["accepted"] != float64(2) {
				t.Fatalf("post: HTTP %d %v, want 202 accepted 2", status, m)
			}
		}
		for i := 0; i < 40; i++ {
			m := sse.Message("lobby")
			if want := fmt.Sprintf("%d-%d", i/2, i%2+1); m.Text != want || m.Seq != int64(i+1) {
				t.Fatalf("message %d: %q seq %d, want %q seq %d", i, m.Text, m.Seq, want, i+1)
			}
		}
	})
}

// The refusals of the commands route: a wrong or missing key is 403 on
// any replica, a session that ended is 404 session_closed, a body over
// Chat.MaxFrameBytes is 413, one that is not UTF-8 is 400; the session
// stays usable after each.
func TestSSECommandRefusals(t *testing.T) {
	brokers(t, func(t *testing.T, home, other *chattest.Server) {
		sse := home.DialSSEName(t, "ann")
		for _, s := range []*chattest.Server{home, other} {
			sse.SSE.CommandsURL = strings.Replace(sse.SSE.CommandsURL, home.URL, s.URL, 1)
			sse.SSE.CommandsURL = strings.Replace(sse.SSE.CommandsURL, other.URL, s.URL, 1)
			cmd := `{"type":"rooms","id":1}`
			for _, key := range []string{"", "wrong", strings.ToUpper(sse.SSE.Key)} {
				if status, m := sse.SSE.Post(t, cmd, key); status != http.StatusForbidden || m["code"] != protocol.CodeForbidden {
					t.Fatalf("key %q: HTTP %d %v, want 403 forbidden", key, status, m)
				}
			}
			big := `{"type":"send","room":"lobby","text":"` + strings.Repeat("x", s.Config.Chat.MaxFrameBytes) + `"}`
			if status, m := sse.SSE.Post(t, big, sse.SSE.Key); status != http.StatusRequestEntityTooLarge || m["code"] != protocol.CodeTooLarge {
				t.Fatalf("oversized: HTTP %d %v, want 413 too_large", status, m)
			}
			if status, m := sse.SSE.Post(t, "{\"type\":\"rooms\",\"id\":\"\xff\"}", sse.SSE.Key); status != http.StatusBadRequest || m["code"] != protocol.CodeBadRequest {
				t.Fatalf("not UTF-8: HTTP %d %v, want 400 bad_request", status, m)
			}
			sse.OK("rooms", nil, nil) // still usable
		}
		unknown := chattest.SSEStream{CommandsURL: other.URL + "/api/sessions/" + home.Node.ID + "-ffffff/commands"}
		if status, m := unknown.Post(t, `{"type":"rooms"}`, sse.SSE.Key); status != http.StatusNotFound || m["code"] != protocol.CodeSessionClosed {
			t.Fatalf("unknown session: HTTP %d %v, want 404 session_closed", status, m)
		}
		sse.Close()
		for _, s := range []*chattest.Server{home, other} {
			ended := chattest.SSEStream{CommandsURL: s.URL + "/api/sessions/" + sse.SSE.Session + "/commands"}
			eventually(t, "the ended session is 404 on "+s.URL, func() bool {
				status, m := ended.Post(t, `{"type":"rooms"}`, sse.SSE.Key)
				return status == http.StatusNotFound && m["code"] == protocol.CodeSessionClosed
			})
		}
	})
}

// The rate limit counts posted commands as it counts a WebSocket's: a body
// over the burst gets rate_limited for the rest, on the stream.
func TestSSECommandsAreRateLimited(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.RateLimit, c.Chat.RateBurst = 1, 5 })
	sse := s.DialSSEName(t, "ann")
	var body []string
	for i := 1; i <= 8; i++ {
		body = append(body, fmt.Sprintf(`{"type":"rooms","id":%d}`, i))
	}
	if status, m := sse.SSE.Post(t, strings.Join(body, "\n"), sse.SSE.Key); status != http.StatusAccepted || m["accepted"] != float64(8) {
		t.Fatalf("HTTP %d %v", status, m)
	}
	limited := 0
	for i := 1; i <= 8; i++ {
		if r := sse.ReplyWithin(i, chattest.Timeout); r.Err != nil {
			if r.Err.Code != protocol.CodeRateLimited {
				t.Fatalf("reply %d: %+v", i, r.Err)
			}
			limited++
		}
	}
	if limited < 2 || limited > 3 {
		t.Fatalf("%d of 8 commands rate limited with a burst of 5, want 3 (2 if a token came back)", limited)
	}
}

// Every admission check of /ws applies to /sse, with the same refusals.
func TestSSEAdmissionRefusesAsTheWebSocketDoes(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxUserConnections = 1 })
	refused := func(query string, header http.Header, status int) {
		t.Helper()
		c, resp, err := chattest.DialSSEURL(t, s.URL+"/sse?"+query, header)
		if err != nil || c != nil || resp.StatusCode != status {
			t.Fatalf("/sse?%s: client %v err %v status %v, want %d", query, c != nil, err, resp, status)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("refusal content type %q", ct)
		}
	}
	refused("name=system", nil, http.StatusBadRequest)
	refused("name="+strings.Repeat("x", 33), nil, http.StatusBadRequest)
	refused("name=a%E2%80%8Bb", nil, http.StatusBadRequest) // zero-width space (Cf)
	refused("name=ann", http.Header{"Origin": {"http://evil.example"}}, http.StatusForbidden)
	s.DialSSEName(t, "ann")
	refused("name=ann", nil, http.StatusServiceUnavailable) // MaxUserConnections
	guest := s.DialSSE(t, "")
	if !strings.HasPrefix(guest.Welcome.Str("user"), "guest-") {
		t.Fatalf("nameless session is %s", guest.Welcome)
	}
	s.Node.StopAccepting()
	refused("name=bob", nil, http.StatusServiceUnavailable)
}

// With Auth.AccessSecret, /sse takes the token from ?token= like /ws.
func TestSSENeedsATokenWhenAuthIsOn(t *testing.T) {
	s := startAuth(t)
	if c, resp, _ := chattest.DialSSEURL(t, s.URL+"/sse?name=ann", nil); c != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %v", resp.Status)
	}
	c := s.DialSSE(t, "token="+hs256(t, jwt.MapClaims{"name": "carol"}))
	if c.Welcome.Str("user") != "carol" {
		t.Fatalf("welcome %s", c.Welcome)
	}
}

// A kick ends an SSE session with a close event 4003, then the response.
func TestSSEKickEndsTheStreamWith4003(t *testing.T) {
	s := startAdmin(t)
	sse := s.DialSSEName(t, "ann")
	call(t, s, http.MethodDelete, "/api/users/ann/connections", apiKey, nil).ok(t, nil)
	if code := sse.CloseCode(); code != protocol.CloseKicked {
		t.Fatalf("close code %d, want 4003", code)
	}
	if e := sse.WaitFor("close", nil); e.Str("reason") == "" {
		t.Fatalf("close event %s has no reason", e)
	}
}

// Shutdown flushes what is queued, then ends every stream with 1001.
func TestSSEShutdownEndsTheStreamWith1001(t *testing.T) {
	s := chattest.Start(t, fast)
	sse := s.DialSSEName(t, "ann")
	sse.Join("lobby")
	ws := s.DialName(t, "bob")
	ws.Join("lobby")
	ws.Say("lobby", "last words")
	go s.Node.Shutdown()
	if code := sse.CloseCode(); code != 1001 {
		t.Fatalf("close code %d, want 1001", code)
	}
	if m := sse.Message("lobby"); m.Text != "last words" {
		t.Fatalf("got %+v before the close", m)
	}
}

// An SSE client that stops reading is closed as a slow consumer (4008)
// once Chat.MaxQueueBytes is queued; the close event follows what it had.
func TestSSESlowConsumerIsClosedWith4008(t *testing.T) {
	s := startAdmin(t, func(c *config.Config) { c.Chat.MaxQueueBytes = 64 << 10 })
	resp, err := http.Get(s.URL + "/sse?name=slow")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	welcome, _ := r.ReadString('\n')
	var session, key string
	for _, f := range strings.Split(welcome, ",") {
		if v, ok := strings.CutPrefix(f, `"session":`); ok {
			session = strings.Trim(v, `"`)
		}
		if v, ok := strings.CutPrefix(f, `"sessionKey":`); ok {
			key = strings.Trim(v, `"}`+"\n")
		}
	}
	stream := chattest.SSEStream{CommandsURL: s.URL + "/api/sessions/" + session + "/commands"}
	if status, m := stream.Post(t, `{"type":"join","room":"flood"}`, key); status != http.StatusAccepted {
		t.Fatalf("join: HTTP %d %v", status, m)
	}
	eventually(t, "slow is a member", func() bool {
		page, _ := s.Node.Members(t.Context(), "flood", "", 0)
		return page.Count == 1
	})
	text := strings.Repeat("x", 2000)
	for i := 0; s.Node.Stats().SlowConsumers == 0; i++ {
		if i == 20000 {
			t.Fatal("20,000 messages and the reader that never reads is not a slow consumer")
		}
		call(t, s, http.MethodPost, "/api/rooms/flood/messages", apiKey, map[string]any{"text": text}).ok(t, nil)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("the stream ended without a close event: %v", err)
		}
		if strings.HasPrefix(line, `data: {"type":"close"`) {
			if !strings.Contains(line, `"code":4008`) {
				t.Fatalf("close event %q, want 4008", line)
			}
			return
		}
	}
	t.Fatal("no close event within 30 s")
}

// The stream carries a comment line every Chat.PingInterval.
func TestSSEStreamHasAHeartbeat(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.PingInterval = 100 * time.Millisecond })
	sse := s.DialSSEName(t, "ann")
	eventually(t, "two heartbeats", func() bool { return sse.SSE.Pings.Load() >= 2 })
}

// Sessions that end, however they end, leave no goroutine of theirs and
// no connection counted.
func TestSSESessionsLeaveNoGoroutines(t *testing.T) {
	s := startAdmin(t, fast)
	var clients []*chattest.Client
	for i := range 20 {
		c := s.DialSSEName(t, fmt.Sprint("u", i))
		c.Join("lobby")
		c.Say("lobby", "hi")
		clients = append(clients, c)
	}
	for i, c := range clients {
		switch i % 3 {
		case 0:
			c.Close()
		case 1:
			call(t, s, http.MethodDelete, fmt.Sprintf("/api/users/u%d/connections", i), apiKey, nil).ok(t, nil)
		case 2:
			c.Write(`{"type":"leave","room":"lobby"}`)
			c.Close()
		}
	}
	eventually(t, "no session left", func() bool {
		return s.Node.Stats().Connections == 0 &&
			chattest.ConnGoroutines(t, chat.LabelStream, chat.LabelCommands) == 0
	})
}

// A stream lasts as long as its session: no request timeout of go-zero's
// (Timeout, 3 s by default) or of net/http cuts it.
func TestSSEStreamOutlivesTheRequestTimeout(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) { c.Timeout = 1000 })
	sse := s.DialSSEName(t, "ann")
	sse.Join("lobby")
	time.Sleep(2500 * time.Millisecond)
	if seq := sse.Say("lobby", "still here"); seq != 1 {
		t.Fatalf("seq %d", seq)
	}
	if m := sse.Message("lobby"); m.Text != "still here" {
		t.Fatalf("got %+v", m)
	}
}

// The stream's response, written by the service itself once it takes the
// connection over, carries the headers of every response (SPEC §11) and
// those of an event stream.
func TestSSEResponseCarriesTheStreamAndSecurityHeaders(t *testing.T) {
	s := chattest.Start(t)
	c := s.DialSSEName(t, "ann")
	h := c.SSE.Resp.Header
	for name, want := range map[string]string{
		"Content-Type":            "text/event-stream",
		"Cache-Control":           "no-cache",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"X-Accel-Buffering":       "no",
		"Content-Security-Policy": "frame-ancestors 'none'",
	} {
		if got := h.Get(name); !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q in it", name, got, want)
		}
	}
	if c.SSE.Resp.ProtoMajor != 1 || c.SSE.Resp.ProtoMinor != 1 {
		t.Errorf("proto %s", c.SSE.Resp.Proto)
	}
}

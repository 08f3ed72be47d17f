package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v4"
)

// The page's second transport (SPEC §12): an SSE stream for events and HTTP
// POSTs for commands, chosen with ?transport=sse or after two WebSocket opens
// failed in a row.

// openTabWith is openTab with script run in every document of the tab before
// the page's own scripts (page.AddScriptToEvaluateOnNewDocument).
func openTabWith(t *testing.T, browser context.Context, url, who, script string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	p := &tab{t: t, ctx: ctx, who: who}
	start(t, ctx, "open a tab for "+who)
	if script != "" {
		sctx, scancel := context.WithTimeout(ctx, waitTimeout)
		_, err := chromedp.Call(sctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: script})
		scancel()
		if err != nil {
			t.Fatalf("%s: add the script: %v", who, err)
		}
	}
	p.do(chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("status")))
	return p
}

// waitTransport waits until the status pill names transport.
func (p *tab) waitTransport(transport string) {
	p.t.Helper()
	p.waitJS("status pill names "+transport, `(() => {
		const e = document.getElementById('transport');
		return e.textContent === `+jsString(transport)+` && !e.hidden && getComputedStyle(e).display !== 'none' &&
			document.getElementById('status-pill').textContent.includes(`+jsString(transport)+`);
	})()`)
}

// waitWithin waits until the expression is truthy, failing after d (less
// than waitTimeout: for what the page must notice by itself, before any
// timer of its own would make it notice).
func (p *tab) waitWithin(what, expr string, d time.Duration) {
	p.t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(40 * time.Millisecond) {
		var ok bool
		p.eval(`!!(`+expr+`)`, &ok)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: %s not within %v\npage: %s", p.who, what, d, p.snapshot())
		}
	}
}

// countingFront is a reverse proxy in front of the server that counts the
// requests per path (SSE streams pass: the proxy flushes
// text/event-stream at once). refuseWS answers every /ws with 403, as a
// network that blocks WebSockets does.
type countingFront struct {
	URL      string
	ws, sse  atomic.Int64
	posts    atomic.Int64 // POST /api/sessions/:session/commands
	refuseWS atomic.Bool
}

func startFront(t *testing.T, serverURL string) *countingFront {
	t.Helper()
	target, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	f := &countingFront{}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/ws"):
			f.ws.Add(1)
			if f.refuseWS.Load() {
				http.Error(w, "websockets are not allowed here", http.StatusForbidden)
				return
			}
		case r.URL.Path == "/sse":
			f.sse.Add(1)
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/api/sessions/"):
			f.posts.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// TestStatusPillNamesWebSocket: by default the page talks WebSocket and says so.
func TestStatusPillNamesWebSocket(t *testing.T) {
	s := chattest.Start(t)
	front := startFront(t, s.URL)
	browser := newBrowser(t)
	alice := openTab(t, browser, front.URL+"/", "alice")
	alice.pickName("alice")
	alice.waitTransport("WebSocket")
	if n := front.sse.Load(); n != 0 {
		t.Fatalf("%d SSE streams opened by a page whose WebSocket works", n)
	}
}

// TestSSEPageChatsWithWebSocketClient: a page loaded with ?transport=sse
// never opens a WebSocket, says SSE in its status pill, and chats with a
// WebSocket client: presence, typing both ways, room messages both ways,
// direct messages both ways.
func TestSSEPageChatsWithWebSocketClient(t *testing.T) {
	s := chattest.Start(t)
	front := startFront(t, s.URL)
	browser := newBrowser(t)
	alice := openTab(t, browser, front.URL+"/?transport=sse", "alice")
	alice.pickName("alice")
	alice.waitTransport("SSE")
	alice.joinRoom("lobby")

	bob := s.DialName(t, "bob")
	bob.Join("lobby")
	alice.waitMembers("alice", "bob")
	var members struct {
		Members []struct{ User string } `json:"members"`
	}
	bob.OK("members", map[string]any{"room": "lobby"}, &members)
	if fmt.Sprint(members.Members) != "[{alice} {bob}]" {
		t.Fatalf("members seen by the WebSocket client: %+v", members.Members)
	}

	// Typing, both ways: alice's goes out as a POST, bob's comes on the stream.
	alice.typeInComposer("hello bob")
	bob.WaitFor("typing", func(e chattest.Event) bool { return e.Str("user") == "alice" && e.Str("room") == "lobby" })
	bob.OK("typing", map[string]any{"room": "lobby"}, nil)
	alice.waitJS("bob is typing", `document.getElementById('typing').textContent.includes('bob is typing')`)

	// Room messages, both ways, each shown once with its seq.
	alice.do(keys("\r"))
	if m := bob.Message("lobby"); m.From != "alice" || m.Text != "hello bob" || m.Seq != 1 {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitMessage("alice", "hello bob")
	bob.Say("lobby", "hi <b>alice</b>\nsecond line")
	alice.waitMessage("bob", "hi <b>alice</b>\nsecond line")
	alice.waitJS("typing indicator cleared", `document.getElementById('typing').textContent === ''`)
	msgs := alice.messages()
	if len(msgs) != 2 || msgs[0].Seq != "1" || !strings.Contains(msgs[0].Classes, "mine") ||
		msgs[1].Seq != "2" || strings.Contains(msgs[1].Classes, "mine") {
		t.Fatalf("alice's view: %+v", msgs)
	}
	if n := alice.str(`String(document.querySelectorAll('#messages b').length)`); n != "0" {
		t.Fatalf("message rendered as HTML")
	}

	// Direct messages, both ways.
	bob.OK("direct", map[string]any{"to": "alice", "text": "psst"}, nil)
	alice.waitJS("direct conversation listed", `!!document.querySelector('#rooms li[data-room="@bob"]')`)
	alice.do(chromedp.Click(chromedp.CSS(`#rooms li[data-room="@bob"] button`)))
	alice.waitMessage("bob", "psst")
	alice.typeInComposer("psst yourself\r")
	alice.waitMessage("alice", "psst yourself")
	if e := bob.WaitFor("direct", nil); e.Str("from") != "alice" || e.Str("text") != "psst yourself" {
		t.Fatalf("bob got %s", e)
	}

	// Presence: bob leaves and alice's member list follows.
	alice.do(chromedp.Click(chromedp.CSS(`#rooms li[data-room="lobby"] button`)))
	bob.OK("leave", map[string]any{"room": "lobby"}, nil)
	alice.waitMembers("alice")

	if n := front.ws.Load(); n != 0 {
		t.Fatalf("%d WebSocket opens by a page loaded with ?transport=sse", n)
	}
	if n := front.sse.Load(); n != 1 {
		t.Fatalf("%d SSE streams, want 1", n)
	}
}

// TestPageFallsBackToSSEWhenWebSocketsFail: when WebSocket opens fail (the
// constructor throws, the socket fails at once, or the network answers the
// upgrade with 403), the page tries twice, then goes on by itself over SSE,
// says so, chats, and opens no more WebSockets.
func TestPageFallsBackToSSEWhenWebSocketsFail(t *testing.T) {
	for _, tc := range []struct {
		name     string
		script   string // run before the page's scripts
		refuseWS bool
		wsOpens  int64 // WebSocket requests the server side sees
	}{
		{
			name:   "constructor throws",
			script: `window.WebSocket = function WebSocket() { throw new DOMException('blocked by the test', 'SecurityError'); };`,
		},
		{
			name: "socket fails at once",
			script: `(() => {
				const Real = window.WebSocket;
				// The same server, at a path with no WebSocket: the handshake fails.
				window.WebSocket = function WebSocket(url, protocols) {
					return new Real(String(url).replace('/ws?', '/ws-blocked?'), protocols);
				};
			})();`,
			wsOpens: 2,
		},
		{name: "upgrade refused by the network", refuseWS: true, wsOpens: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := chattest.Start(t)
			front := startFront(t, s.URL)
			front.refuseWS.Store(tc.refuseWS)
			bob := s.DialName(t, "bob")
			bob.Join("general")

			browser := newBrowser(t)
			alice := openTabWith(t, browser, front.URL+"/", "alice", tc.script)
			alice.pickName("alice")
			alice.waitTransport("SSE")
			alice.waitMembers("alice", "bob")
			alice.typeInComposer("over SSE\r")
			if m := bob.Message("general"); m.From != "alice" || m.Text != "over SSE" {
				t.Fatalf("bob got %+v", m)
			}
			alice.waitMessage("alice", "over SSE")
			bob.Say("general", "got it")
			alice.waitMessage("bob", "got it")

			if n := front.ws.Load(); n != tc.wsOpens {
				t.Fatalf("%d WebSocket requests, want %d", n, tc.wsOpens)
			}
			if n := front.sse.Load(); n != 1 {
				t.Fatalf("%d SSE streams, want 1", n)
			}
			var state struct{ Transport string }
			alice.eval(`window.chat.state()`, &state)
			if state.Transport != "SSE" {
				t.Fatalf("window.chat.state().transport = %q", state.Transport)
			}
		})
	}
}

// TestSSECommandsKeepTheirOrder: commands sent faster than their POSTs are
// answered reach the server in the order they were sent (the page chains
// its POSTs and batches what queued up meanwhile), and each is confirmed.
func TestSSECommandsKeepTheirOrder(t *testing.T) {
	s := chattest.Start(t)
	front := startFront(t, s.URL)
	bob := s.DialName(t, "bob")
	bob.Join("general")
	browser := newBrowser(t)
	alice := openTab(t, browser, front.URL+"/?transport=sse", "alice")
	alice.pickName("alice")
	alice.waitMembers("alice", "bob")

	const n = 30
	posts := front.posts.Load()
	alice.eval(`(() => { for (let i = 1; i <= `+strconv.Itoa(n)+`; i++) window.chat.send('n' + i); return true; })()`, nil)
	for i := 1; i <= n; i++ {
		if m := bob.Message("general"); m.Text != fmt.Sprint("n", i) || m.Seq != int64(i) {
			t.Fatalf("message %d at the server: %q seq %d", i, m.Text, m.Seq)
		}
	}
	alice.waitMessage("alice", fmt.Sprint("n", n))
	// One POST for the first, one for the rest that queued behind it; a
	// few more at most if the page's own commands (typing, rooms) interleave.
	if p := front.posts.Load() - posts; p > 5 {
		t.Fatalf("%d POSTs for %d commands sent at once, want them batched", p, n)
	}
	alice.waitJS("every message confirmed", `window.chat.state().rooms.general.outbox.length === 0`)
	msgs := alice.messages()
	if len(msgs) != n {
		t.Fatalf("%d messages shown, want %d: %+v", len(msgs), n, msgs)
	}
	for i, m := range msgs {
		if m.Text != fmt.Sprint("n", i+1) || m.Seq != strconv.Itoa(i+1) {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
}

// recordEventSources keeps every EventSource the page makes in
// window.eventSources.
const recordEventSources = `(() => {
	const Real = window.EventSource;
	window.eventSources = [];
	window.EventSource = function EventSource(url, init) {
		const es = new Real(url, init);
		window.eventSources.push(es);
		return es;
	};
	window.EventSource.prototype = Real.prototype;
})();`

// TestSSEResumesWithoutGapsAfterStreamDrop: the network drops the page's SSE
// stream while the server keeps running. The page shows it, marks a message
// typed meanwhile as not delivered, reconnects by itself over SSE (a new
// session), resumes the room with `since`, resends the undelivered message
// once, and shows every message once, in seq order.
func TestSSEResumesWithoutGapsAfterStreamDrop(t *testing.T) {
	// History keeps 4 messages: enough to recover what alice misses (m3 to
	// m5 after m2), too few for a join without `since` to show m1 again.
	s := chattest.Start(t, func(c *config.Config) { c.Chat.HistorySize = 4 })
	proxy := startProxy(t, s.URL)
	browser := newBrowser(t)
	alice := openTabWith(t, browser, proxy.URL()+"/?transport=sse", "alice", recordEventSources)
	alice.pickName("alice")
	alice.waitTransport("SSE")
	alice.joinRoom("lobby")

	bob := s.DialName(t, "bob")
	bob.Join("lobby")
	bob.Say("lobby", "m1")
	bob.Say("lobby", "m2")
	alice.waitMessage("bob", "m2")
	var before struct{ Client string }
	alice.eval(`window.chat.state()`, &before)
	// The page's own commands after bob's join (members) are answered by
	// now: the stream alone must tell it of the drop.
	time.Sleep(500 * time.Millisecond)

	proxy.cut(true)
	alice.waitWithin("status shows the outage", `document.getElementById('status').dataset.state === 'reconnecting'`, 5*time.Second)
	alice.waitTransport("SSE")
	// The old session ends with its stream: the room sees alice go.
	bob.WaitFor("left", func(e chattest.Event) bool { return e.Str("user") == "alice" })
	bob.Say("lobby", "m3")
	bob.Say("lobby", "m4")
	bob.Say("lobby", "m5")
	alice.typeInComposer("typed while offline\r")
	alice.waitJS("marked not delivered", `[...document.querySelectorAll('#messages .msg.failed')].some((li) =>
		li.querySelector('.text').textContent === 'typed while offline' &&
		/not delivered/i.test(li.querySelector('.error-text').textContent))`)
	time.Sleep(700 * time.Millisecond) // let a reconnect attempt or two fail

	proxy.allow()
	alice.waitJS("online again", `document.getElementById('status').dataset.state === 'online'`)
	alice.waitTransport("SSE")
	// The page reconnected with a stream of its own, having closed each
	// broken one (an EventSource left to reconnect by itself would make a
	// session nobody resumed).
	var streams []int
	alice.eval(`window.eventSources.map((e) => e.readyState)`, &streams)
	if len(streams) < 2 || streams[len(streams)-1] != 1 {
		t.Fatalf("EventSource states %v: want closed ones (2), then the open one (1)", streams)
	}
	for _, st := range streams[:len(streams)-1] {
		if st != 2 {
			t.Fatalf("EventSource states %v: an old stream was left to reconnect by itself", streams)
		}
	}
	resumedWithoutGaps(t, alice, bob)
	var after struct{ Client string }
	alice.eval(`window.chat.state()`, &after)
	if after.Client == "" || after.Client == before.Client {
		t.Fatalf("client %q before the drop, %q after: want a new session", before.Client, after.Client)
	}
	// The resend used the same idempotency key: the server has it once.
	if n := historyCount(t, bob, "lobby", "typed while offline"); n != 1 {
		t.Fatalf("server history has the resent message %d times", n)
	}
}

// TestKickedSSEPageStaysOffline: an administrator's kick ends the SSE
// session with a close event of code 4003; the page says so and opens no
// new stream.
func TestKickedSSEPageStaysOffline(t *testing.T) {
	s := chattest.Start(t, withAPIKey)
	front := startFront(t, s.URL)
	browser := newBrowser(t)
	alice := openTab(t, browser, front.URL+"/?transport=sse", "alice")
	alice.pickName("alice")
	alice.waitTransport("SSE")
	admin(t, s, http.MethodDelete, "/api/users/alice/connections", "")
	alice.waitJS("offline, saying why", `document.getElementById('status').dataset.state === 'offline' &&
		/administrator/.test(document.getElementById('status').textContent) &&
		[...document.querySelectorAll('#errors .toast-text')].some((e) => /administrator/.test(e.textContent))`)
	time.Sleep(1500 * time.Millisecond) // long enough for several reconnect attempts
	if st := alice.str(`document.getElementById('status').dataset.state`); st != "offline" {
		t.Fatalf("status %q after the kick, want offline: %s", st, alice.snapshot())
	}
	if n, w := front.sse.Load(), front.ws.Load(); n != 1 || w != 0 {
		t.Fatalf("%d SSE streams and %d WebSocket opens, want only the first stream", n, w)
	}
	var u struct {
		Online bool `json:"online"`
	}
	resp, err := http.Get(s.URL + "/api/users/alice")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&u); err != nil || u.Online {
		t.Fatalf("alice after the kick: online %v (%v)", u.Online, err)
	}
}

// TestSSEPageWithToken: with token auth on, the page's stream carries the
// token as the WebSocket URL does, and the session key alone authorizes the
// POSTed commands.
func TestSSEPageWithToken(t *testing.T) {
	const secret = "s"
	s := chattest.Start(t, func(c *config.Config) { c.Auth.AccessSecret = secret })
	bob := s.Dial(t, "token="+url.QueryEscape(signedToken(t, secret, "bob")))
	bob.Join("general")

	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/?transport=sse&token="+url.QueryEscape(signedToken(t, secret, "alice")), "alice")
	alice.pickName("alice")
	alice.waitTransport("SSE")
	alice.waitMembers("alice", "bob")
	alice.typeInComposer("signed in\r")
	if m := bob.Message("general"); m.From != "alice" || m.Text != "signed in" {
		t.Fatalf("bob got %+v", m)
	}
}

// signedToken is a JWT for user, valid for an hour.
func signedToken(t *testing.T, secret, user string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"name": user,
		"exp":  time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

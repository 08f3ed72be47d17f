package web_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/alicebob/miniredis/v2"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v4"
)

// TestUnavailableSendStaysUnsentWithRetry: Redis goes down while the page is
// online; a message sent then is refused with `unavailable`, shown as not
// sent with a Retry button (no automatic resend), and once Redis is back a
// click on Retry delivers it exactly once.
func TestUnavailableSendStaysUnsentWithRetry(t *testing.T) {
	m := miniredis.RunT(t)
	s := chattest.Start(t, chattest.WithRedis(m.Addr(), "web"))
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")

	m.Close()
	const text = "sent while redis is down"
	alice.typeInComposer(text + "\r")
	alice.waitJS("marked not sent with Retry", `[...document.querySelectorAll('#messages .msg.failed')].some((li) =>
		li.querySelector('.text').textContent === `+jsString(text)+` &&
		/unavailable|not delivered|not sent/i.test(li.querySelector('.error-text').textContent) &&
		!!li.querySelector('button.retry'))`)
	if st := alice.str(`document.getElementById('status').dataset.state`); st != "online" {
		t.Fatalf("status %q after an unavailable reply, want online (the WebSocket stays open)", st)
	}
	// The outbox keeps it as failed (unavailable is not a connection error, so no auto-resend).
	var failed bool
	alice.eval(`window.chat.state().rooms.lobby.outbox.some((o) => o.status === 'failed')`, &failed)
	if !failed {
		t.Fatalf("outbox has no failed entry: %s", alice.snapshot())
	}

	if err := m.Restart(); err != nil {
		t.Fatalf("restart miniredis: %v", err)
	}
	// Redis answers again: wait until a Go client can join the room
	// (the server's Redis client has reconnected) before clicking Retry.
	bob := s.DialName(t, "bob")
	deadline := time.Now().Add(waitTimeout)
	for {
		r := bob.Do("join", map[string]any{"room": "lobby"})
		if r.Err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not recover after Redis restart: %+v", r.Err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	alice.do(chromedp.Click(`#messages .msg.failed button.retry`))
	alice.waitMessage("alice", text)
	alice.waitJS("outbox empty", `window.chat.state().rooms.lobby.outbox.length === 0`)

	n := 0
	for _, msg := range alice.messages() {
		if msg.Text == text {
			n++
			if strings.Contains(msg.Classes, "failed") || strings.Contains(msg.Classes, "pending") {
				t.Fatalf("message still not delivered: %+v", msg)
			}
		}
	}
	if n != 1 {
		t.Fatalf("page shows the message %d times, want once: %s", n, alice.snapshot())
	}
	var h struct {
		Messages []struct{ Text string } `json:"messages"`
	}
	bob.OK("history", map[string]any{"room": "lobby"}, &h)
	n = 0
	for _, msg := range h.Messages {
		if msg.Text == text {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("server history has the message %d times, want once", n)
	}
}

// TestUnauthorizedPageShowsItCannotConnect: with token auth on, a page with
// no token is refused (HTTP 401 before the upgrade); it says it could not
// connect and does not keep retrying. With a valid token it goes online as
// the token's user.
func TestUnauthorizedPageShowsItCannotConnect(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Auth.AccessSecret = "s" })
	target, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	// Count /ws attempts through a reverse proxy in front of the server.
	var attempts atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			attempts.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	// Without a token the server refuses the upgrade.
	if resp, err := http.Get(s.URL + "/ws?name=alice"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("/ws without a token: HTTP %d, want 401", resp.StatusCode)
		}
	}

	browser := newBrowser(t)
	alice := openTab(t, browser, front.URL+"/", "alice")
	alice.do(
		chromedp.Focus(chromedp.ID("name-input")),
		keys("alice"),
		chromedp.Click(chromedp.ID("connect")),
	)
	alice.waitJS("could not connect", `document.getElementById('status').dataset.state === 'offline' &&
		/could not connect/i.test(document.getElementById('status').textContent) &&
		[...document.querySelectorAll('#errors .toast-text')].some((e) => /could not connect/i.test(e.textContent))`)
	first := attempts.Load()
	if first < 1 {
		t.Fatalf("no /ws attempt seen")
	}
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if st := alice.str(`document.getElementById('status').dataset.state`); st != "offline" {
			t.Fatalf("status %q while refused, want offline: %s", st, alice.snapshot())
		}
	}
	if n := attempts.Load(); n > 3 {
		t.Fatalf("%d /ws attempts in ~3 s after a 401, want at most a few", n)
	}
	if st := alice.str(`document.getElementById('status').textContent`); !containsFold(st, "could not connect") {
		t.Fatalf("status %q, want it to say it could not connect", st)
	}

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"name": "alice",
		"exp":  time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte("s"))
	if err != nil {
		t.Fatal(err)
	}
	alice.do(chromedp.Navigate(front.URL+"/?token="+url.QueryEscape(tok)), chromedp.WaitVisible(chromedp.ID("status")))
	alice.waitJS("online as alice", `document.getElementById('status').dataset.state === 'online' &&
		document.getElementById('status').textContent === 'online as alice'`)
	var user string
	alice.eval(`window.chat.state().user`, &user)
	if user != "alice" {
		t.Fatalf("user %q, want alice", user)
	}
}

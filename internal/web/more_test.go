package web_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/chromedp/chromedp"
)

// dropProxy is a TCP proxy in front of the server, so a test can cut the
// browser's connections (and refuse new ones for a while) without stopping
// the server: a network outage, not a restart.
type dropProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []net.Conn
	refuse bool
}

func startProxy(t *testing.T, serverURL string) *dropProxy {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: u.Host}
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut(true)
	})
	go p.serve()
	return p
}

func (p *dropProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *dropProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
		go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
	}
}

// cut closes every open connection; with refuse, new ones are closed at once
// until allow.
func (p *dropProxy) cut(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = refuse
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *dropProxy) allow() {
	p.mu.Lock()
	p.refuse = false
	p.mu.Unlock()
}

// TestResumesWithoutGapsAfterConnectionDrop: the network drops while the
// server keeps running. The page shows it, marks a message typed meanwhile
// as not delivered, reconnects by itself, resumes the room with `since`
// (recovered: only the missed messages), resends the undelivered message
// once, and shows every message once, in seq order.
func TestResumesWithoutGapsAfterConnectionDrop(t *testing.T) {
	s := chattest.Start(t)
	proxy := startProxy(t, s.URL)
	browser := newBrowser(t)
	alice := openTab(t, browser, proxy.URL()+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")

	bob := s.DialName(t, "bob")
	bob.Join("lobby")
	bob.Say("lobby", "m1")
	bob.Say("lobby", "m2")
	alice.waitMessage("bob", "m2")

	proxy.cut(true)
	alice.waitJS("status shows the outage", `document.getElementById('status').dataset.state === 'reconnecting'`)
	bob.Say("lobby", "m3")
	bob.Say("lobby", "m4")
	bob.Say("lobby", "m5")
	alice.typeInComposer("typed while offline\r")
	alice.waitJS("marked not delivered", `[...document.querySelectorAll('#messages .msg.failed')].some((li) =>
		li.querySelector('.text').textContent === 'typed while offline' &&
		/not delivered/i.test(li.querySelector('.error-text').textContent))`)

	proxy.allow()
	alice.waitJS("online again", `document.getElementById('status').dataset.state === 'online'`)
	resumedWithoutGaps(t, alice, bob)
	// The resend used the same idempotency key: the server has it once.
	if n := historyCount(t, bob, "lobby", "typed while offline"); n != 1 {
		t.Fatalf("server history has the resent message %d times", n)
	}
}

// TestResumeAfterLongGapShowsLatest: when more messages were missed than
// the server keeps (Chat.HistorySize = 5), the resume is not recovered: the
// page replaces the view with the latest messages, says why, and shows
// nothing twice.
func TestResumeAfterLongGapShowsLatest(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.HistorySize = 5 })
	proxy := startProxy(t, s.URL)
	browser := newBrowser(t)
	alice := openTab(t, browser, proxy.URL()+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")
	bob := s.DialName(t, "bob")
	bob.Join("lobby")
	bob.Say("lobby", "m1")
	alice.waitMessage("bob", "m1")

	proxy.cut(true)
	alice.waitJS("status shows the outage", `document.getElementById('status').dataset.state === 'reconnecting'`)
	for i := 2; i <= 12; i++ {
		bob.Say("lobby", fmt.Sprint("m", i))
	}
	proxy.allow()
	alice.waitMessage("bob", "m12")
	alice.waitJS("online", `document.getElementById('status').dataset.state === 'online'`)

	msgs := alice.messages()
	want := []string{"m8", "m9", "m10", "m11", "m12"}
	if strings.Join(texts(msgs), "|") != strings.Join(want, "|") {
		t.Fatalf("messages: %q, want the latest %q", texts(msgs), want)
	}
	for i, m := range msgs {
		if m.Seq != strconv.Itoa(i+8) {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
	alice.waitJS("gap notice above the messages", `(() => {
		const first = document.querySelector('#messages > li');
		return first.classList.contains('notice') && /latest messages/i.test(first.textContent);
	})()`)
}

// TestRoomsHistoryAndLeave: the page lists other rooms with member counts,
// joins one by a click, shows its latest history, loads older messages down
// to the first, and leaves it (the other members see it go).
func TestRoomsHistoryAndLeave(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.RateLimit, c.Chat.RateBurst = 1000, 1000 })
	carol := s.DialName(t, "carol")
	dave := s.DialName(t, "dave")
	carol.Join("design")
	dave.Join("design")
	for i := 1; i <= 60; i++ {
		carol.Say("design", fmt.Sprint("design ", i))
	}

	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.waitJS("design listed with 2 members", `(() => {
		const li = document.querySelector('#directory li[data-dir-room="design"]');
		return li && li.querySelector('.count').textContent === '2';
	})()`)
	alice.do(chromedp.Click(chromedp.CSS(`#directory li[data-dir-room="design"] button`)))
	alice.waitJS("design open", `document.getElementById('room-title').textContent === '#design' &&
		document.querySelectorAll('#messages .msg').length === 50`)
	alice.waitMembers("alice", "carol", "dave")
	alice.waitJS("member count in the sidebar", `document.querySelector('#rooms li[data-room="design"] .count').textContent === '3'`)
	carol.WaitFor("joined", func(e chattest.Event) bool { return e.Str("user") == "alice" })
	if m := alice.messages(); m[0].Text != "design 11" || m[49].Text != "design 60" {
		t.Fatalf("history on join: %q .. %q, want the latest 50", m[0].Text, m[49].Text)
	}

	alice.do(chromedp.Click(chromedp.ID("load-older")))
	alice.waitJS("older messages loaded", `document.querySelectorAll('#messages .msg').length === 60 &&
		document.getElementById('load-older').disabled`)
	for i, m := range alice.messages() {
		if m.Text != fmt.Sprint("design ", i+1) || m.Seq != strconv.Itoa(i+1) {
			t.Fatalf("message %d after loading older: %+v", i, m)
		}
	}

	alice.do(chromedp.Click(chromedp.ID("leave")))
	alice.waitJS("design left", `!document.querySelector('#rooms li[data-room="design"]') &&
		document.getElementById('room-title').textContent === '#general'`)
	carol.WaitFor("left", func(e chattest.Event) bool { return e.Str("user") == "alice" && e.Str("room") == "design" })
	alice.waitJS("design back in other rooms", `!!document.querySelector('#directory li[data-dir-room="design"]')`)
}

// aliceWritingToBob connects bob (a WebSocket client in #general) and
// opens alice's page on a direct conversation with him, from the member list.
func aliceWritingToBob(t *testing.T, s *chattest.Server, browser context.Context) (*tab, *chattest.Client) {
	t.Helper()
	bob := s.DialName(t, "bob")
	bob.Join("general")
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.waitMembers("alice", "bob")
	alice.do(chromedp.Click(chromedp.CSS(`#members li[data-user="bob"] button`)))
	alice.waitJS("direct conversation open", `document.getElementById('room-title').textContent === '@bob'`)
	return alice, bob
}

// TestDirectMessageToOfflineUserIsMarkedNotDelivered: a direct message to
// someone who has gone is marked failed next to the message, saying so.
func TestDirectMessageToOfflineUserIsMarkedNotDelivered(t *testing.T) {
	s := chattest.Start(t)
	alice, bob := aliceWritingToBob(t, s, newBrowser(t))

	_ = bob.WS.Close()
	alice.typeInComposer("are you there?\r")
	alice.waitJS("marked not delivered", `[...document.querySelectorAll('#messages .msg.failed')].some((li) =>
		li.querySelector('.text').textContent === 'are you there?' &&
		/bob is offline/i.test(li.querySelector('.error-text').textContent) &&
		!!li.querySelector('button.retry'))`)
}

// TestChangeNameAtPhoneWidth: on a phone the name form folds away once
// connected; "Change name" opens it, and a new name reconnects under it.
func TestChangeNameAtPhoneWidth(t *testing.T) {
	s := chattest.Start(t)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	alice.pickName("alice")
	alice.waitJS("name form folded", `getComputedStyle(document.getElementById('name-form')).display === 'none' &&
		getComputedStyle(document.getElementById('rename')).display !== 'none'`)
	alice.do(chromedp.Click(chromedp.ID("rename")))
	alice.waitJS("name form open with focus", `getComputedStyle(document.getElementById('name-form')).display !== 'none' &&
		document.activeElement === document.getElementById('name-input')`)
	alice.do(keys("alicia\r")) // the name is selected: typing replaces it
	alice.waitJS("online under the new name", `document.getElementById('status').textContent === 'online as alicia' &&
		getComputedStyle(document.getElementById('name-form')).display === 'none'`)
	bob := s.DialName(t, "bob")
	var r chattest.JoinResult
	bob.OK("join", map[string]any{"room": "general"}, &r)
	if fmt.Sprint(r.Members) != "[{alicia 1} {bob 1}]" {
		t.Fatalf("members seen by the server: %+v", r.Members)
	}
}

// historyCount counts the messages of room's history with text.
func historyCount(t *testing.T, c *chattest.Client, room, text string) int {
	t.Helper()
	var h struct {
		Messages []struct{ Text string } `json:"messages"`
	}
	c.OK("history", map[string]any{"room": room}, &h)
	n := 0
	for _, m := range h.Messages {
		if m.Text == text {
			n++
		}
	}
	return n
}

// resumedWithoutGaps checks a page that was cut off while bob sent m3..m5
// to lobby and alice typed "typed while offline": once back, alice's
// message reaches bob, and the page shows m1..m6 and hers once each, in
// seq order, delivered, without a reload notice.
func resumedWithoutGaps(t *testing.T, alice *tab, bob *chattest.Client) {
	t.Helper()
	alice.waitMessage("alice", "typed while offline")
	bob.WaitFor("message", func(e chattest.Event) bool { return e.Str("text") == "typed while offline" })
	bob.Say("lobby", "m6")
	alice.waitMessage("bob", "m6")

	msgs := alice.messages()
	want := []string{"m1", "m2", "m3", "m4", "m5", "typed while offline", "m6"}
	if strings.Join(texts(msgs), "|") != strings.Join(want, "|") {
		t.Fatalf("messages: %q, want %q", texts(msgs), want)
	}
	for i, m := range msgs {
		if m.Seq != strconv.Itoa(i+1) || strings.Contains(m.Classes, "failed") {
			t.Fatalf("message %d: %+v, want seq %d, delivered", i, m, i+1)
		}
	}
	if n := alice.str(`String(document.querySelectorAll('#messages .notice').length)`); n != "0" {
		t.Fatalf("%s notices after a recovered resume, want none (nothing was reloaded)", n)
	}
}

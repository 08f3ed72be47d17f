package web_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/chromedp/chromedp"
)

// TestTwoPeopleChatInARoom: two people in two browser contexts pick names,
// join a room, see each other as members, see each other typing, exchange a
// room message, and one sends the other a direct message from the member list.
func TestTwoPeopleChatInARoom(t *testing.T) {
	s := chattest.Start(t)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	bob := openTab(t, browser, s.URL+"/", "bob")

	alice.pickName("alice")
	bob.pickName("bob")
	alice.joinRoom("lobby")
	bob.joinRoom("lobby")
	alice.waitMembers("alice", "bob")
	bob.waitMembers("alice", "bob")

	// Typing shows on the other side, and only there.
	alice.typeInComposer("hello bob")
	bob.waitJS("alice is typing", `document.getElementById('typing').textContent.includes('alice is typing')`)
	if got := alice.str(`document.getElementById('typing').textContent`); got != "" {
		t.Fatalf("alice sees her own typing indicator: %q", got)
	}

	alice.do(keys("\r"))
	bob.waitMessage("alice", "hello bob")
	alice.waitMessage("alice", "hello bob")
	// The sender's copy is marked as hers; the receiver's is not; the typing
	// indicator goes away with the message.
	if m := alice.messages(); len(m) != 1 || !strings.Contains(m[0].Classes, "mine") || m[0].Seq != "1" {
		t.Fatalf("alice's view: %+v", m)
	}
	if m := bob.messages(); len(m) != 1 || strings.Contains(m[0].Classes, "mine") || m[0].Seq != "1" {
		t.Fatalf("bob's view: %+v", m)
	}
	bob.waitJS("typing indicator cleared", `document.getElementById('typing').textContent === ''`)

	// Bob clicks alice in the member list and sends her a direct message.
	bob.do(chromedp.Click(chromedp.CSS(`#members li[data-user="alice"] button`)))
	bob.waitJS("direct conversation open", `document.getElementById('room-title').textContent === '@alice' &&
		document.activeElement === document.getElementById('composer')`)
	bob.typeInComposer("psst, alice\r")
	bob.waitMessage("bob", "psst, alice")

	// Alice is still in #lobby: the conversation appears in her sidebar with an
	// unread count; opening it shows the message.
	alice.waitJS("unread direct conversation", `(() => {
		const li = document.querySelector('#rooms li[data-room="@bob"]');
		return li && li.querySelector('.unread').textContent === '1';
	})()`)
	alice.do(chromedp.Click(chromedp.CSS(`#rooms li[data-room="@bob"] button`)))
	alice.waitJS("direct conversation shown", `document.getElementById('room-title').textContent === '@bob'`)
	alice.waitMessage("bob", "psst, alice")
	if got := alice.str(`document.querySelector('#rooms li[data-room="@bob"] .unread').textContent`); got != "" {
		t.Fatalf("unread count after opening the conversation: %q", got)
	}
}

// TestMarkupInMessagesAndNamesShowsAsText: user text that looks like HTML is
// shown as text, in messages (sent by the page and by another client) and in
// names (member list, direct conversation), and no script of it runs.
func TestMarkupInMessagesAndNamesShowsAsText(t *testing.T) {
	const evil = `<img src=x onerror=alert(1)>`
	const evilName = `<img src=y onerror=alert(2)>`
	s := chattest.Start(t)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")

	mallory := s.DialName(t, evilName)
	mallory.Join("lobby")
	alice.waitMembers("alice", evilName)

	alice.typeInComposer(evil + "\r")
	alice.waitMessage("alice", evil)
	mallory.Say("lobby", evil+" from mallory")
	alice.waitMessage(evilName, evil+" from mallory")
	msgs := alice.messages()
	if len(msgs) != 2 || msgs[0].Text != evil || msgs[1].Text != evil+" from mallory" {
		t.Fatalf("messages: %+v", msgs)
	}

	// A direct message from that name: listed in the sidebar and shown as text.
	mallory.OK("direct", map[string]any{"to": "alice", "text": "<script>alert(3)</script>"}, nil)
	dmRoom := `'#rooms li[data-room="@'+CSS.escape(` + jsString(evilName) + `)+'"]'`
	alice.waitJS("direct conversation listed", `!!document.querySelector(`+dmRoom+`)`)
	if got := alice.str(`document.querySelector(` + dmRoom + `).textContent`); !strings.Contains(got, "@"+evilName) {
		t.Fatalf("sidebar shows %q", got)
	}
	alice.do(chromedp.Click(chromedp.JSPath(`document.querySelector(` + dmRoom + ` + ' button')`)))
	alice.waitMessage(evilName, "<script>alert(3)</script>")

	// Give a would-be onerror handler time to fire.
	time.Sleep(300 * time.Millisecond)
	var counts struct {
		Img, Script int
		Title, Name string
	}
	alice.eval(`({
		img: document.querySelectorAll('body img').length,
		script: document.querySelectorAll('body script:not([src])').length,
		title: document.getElementById('room-title').textContent,
		name: document.querySelector('#members li[data-user="'+CSS.escape(`+jsString(evilName)+`)+'"] .user').textContent,
	})`, &counts)
	if counts.Img != 0 || counts.Script != 0 {
		t.Fatalf("markup was rendered as HTML: %d img, %d inline script elements", counts.Img, counts.Script)
	}
	if counts.Title != "@"+evilName || counts.Name != evilName {
		t.Fatalf("conversation title %q, member name %q", counts.Title, counts.Name)
	}
	if d := alice.Dialogs(); len(d) != 0 {
		t.Fatalf("JavaScript dialogs opened: %v", d)
	}
	// Control: the dialog listener does see a dialog when one opens.
	alice.eval(`setTimeout(() => alert('probe'), 0), true`, nil)
	deadline := time.Now().Add(5 * time.Second)
	for len(alice.Dialogs()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if d := alice.Dialogs(); len(d) != 1 || !strings.Contains(d[0], "probe") {
		t.Fatalf("dialog listener saw %v, want the probe alert", d)
	}
}

// TestReconnectsAfterServerRestart: the server stops and starts again on the
// same port (an in-memory node: history and epoch are new). The page shows the
// outage, reconnects by itself, reloads the room, and shows the messages sent
// during and after the restart exactly once, in order.
func TestReconnectsAfterServerRestart(t *testing.T) {
	c := chattest.Config(t)
	s := chattest.StartConfig(t, c)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")

	bob := s.DialName(t, "bob")
	bob.Join("lobby")
	bob.Say("lobby", "before 1")
	bob.Say("lobby", "before 2")
	alice.waitMessage("bob", "before 2")

	s.Stop()
	alice.waitJS("status shows the outage", `document.getElementById('status').dataset.state !== 'online' &&
		!document.getElementById('status').textContent.startsWith('online')`)
	status := alice.str(`document.getElementById('status').textContent`)
	if !containsFold(status, "reconnect") {
		t.Fatalf("status during the outage: %q", status)
	}
	time.Sleep(700 * time.Millisecond) // let a reconnect attempt or two fail

	s2 := chattest.StartConfig(t, c)
	bob2 := s2.DialName(t, "bob")
	bob2.Join("lobby")
	bob2.Say("lobby", "during 1") // most likely before the page is back
	bob2.Say("lobby", "during 2")
	alice.waitJS("online again", `document.getElementById('status').dataset.state === 'online'`)
	bob2.Say("lobby", "after 1")
	alice.waitMessage("bob", "after 1")
	alice.typeInComposer("alice is back\r")
	alice.waitMessage("alice", "alice is back")
	bob2.WaitFor("message", func(e chattest.Event) bool { return e.Str("text") == "alice is back" })
	bob2.Say("lobby", "after 2")
	alice.waitMessage("bob", "after 2")

	msgs := alice.messages()
	want := []string{"during 1", "during 2", "after 1", "alice is back", "after 2"}
	if strings.Join(texts(msgs), "|") != strings.Join(want, "|") {
		t.Fatalf("messages after the restart: %q, want %q", texts(msgs), want)
	}
	last := 0
	for _, m := range msgs {
		seq, err := strconv.Atoi(m.Seq)
		if err != nil || seq <= last {
			t.Fatalf("data-seq not strictly increasing: %+v", msgs)
		}
		last = seq
	}
	// The reload is explained in the conversation, above the reloaded messages.
	alice.waitJS("room restarted notice", `(() => {
		const first = document.querySelector('#messages > li');
		return first.classList.contains('notice') && /restarted/i.test(first.textContent);
	})()`)
}

// lowRate makes the server rate-limit at one command per second.
func lowRate(c *config.Config) {
	c.Chat.RateLimit = 1
	c.Chat.RateBurst = 1
}

// TestRateLimitedMessageIsMarkedFailed: messages sent faster than the
// server's rate limit are marked failed, next to the message, with a text that
// says so; Retry sends it once the rate allows.
func TestRateLimitedMessageIsMarkedFailed(t *testing.T) {
	s := chattest.Start(t, lowRate)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.waitJS("in #general", `document.getElementById('room-title').textContent === '#general' && !document.getElementById('composer').disabled`)
	time.Sleep(1500 * time.Millisecond) // the bucket refills after the join

	alice.typeInComposer("one\rtwo\rthree\rfour\r")
	alice.waitJS("a failed message", `!!document.querySelector('#messages .msg.failed')`)
	alice.waitJS("no pending message", `!document.querySelector('#messages .msg.pending')`)
	var failed []shownMsg
	for _, m := range alice.messages() {
		if strings.Contains(m.Classes, "failed") {
			failed = append(failed, m)
		}
	}
	rateLimit := regexp.MustCompile(`(?i)rate.?limit`)
	for _, m := range failed {
		if !rateLimit.MatchString(m.Error) {
			t.Fatalf("failed message %q says %q, want a mention of the rate limit", m.Text, m.Error)
		}
	}
	// Every typed message is shown once, delivered or marked failed.
	shown := map[string]int{}
	for _, m := range alice.messages() {
		shown[m.Text]++
	}
	if len(shown) != 4 || shown["one"] != 1 || shown["two"] != 1 || shown["three"] != 1 || shown["four"] != 1 {
		t.Fatalf("messages shown: %+v", alice.messages())
	}

	// Retry, once the bucket has a token again, delivers the message once.
	time.Sleep(1200 * time.Millisecond)
	retried := failed[0].Text
	alice.do(chromedp.Click(chromedp.CSS(`#messages .msg.failed .retry`)))
	alice.waitJS("retried message confirmed", `[...document.querySelectorAll('#messages .msg')].some((li) =>
		li.querySelector('.text').textContent === `+jsString(retried)+` && li.dataset.seq !== '')`)
	n := 0
	for _, m := range alice.messages() {
		if m.Text == retried {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%q shown %d times after retry: %+v", retried, n, alice.messages())
	}
}

// TestTooLongMessageIsFlagged: with Chat.MaxText = 10 the composer counts
// characters (code points, as the server does), flags text over the limit,
// and does not send it; text at the limit is sent.
func TestTooLongMessageIsFlagged(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxText = 10 })
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.waitJS("in #general", `document.getElementById('room-title').textContent === '#general' && !document.getElementById('composer').disabled`)

	alice.typeInComposer("this is too long")
	alice.waitJS("char count flags it", `document.getElementById('char-count').textContent === '16 / 10' &&
		document.getElementById('char-count').classList.contains('over') &&
		document.getElementById('composer').getAttribute('aria-invalid') === 'true' &&
		document.getElementById('send').disabled`)
	alice.do(keys("\r"))
	alice.waitJS("too-long error shown", `[...document.querySelectorAll('#errors .toast-text')].some((e) => /too long/i.test(e.textContent))`)
	if got := alice.str(`document.getElementById('composer').value`); got != "this is too long" {
		t.Fatalf("composer lost the text: %q", got)
	}
	if m := alice.messages(); len(m) != 0 {
		t.Fatalf("too-long text was sent: %+v", m)
	}

	// Ten emoji are ten code points (twenty UTF-16 units): within the limit.
	emoji := strings.Repeat("😀", 10)
	alice.eval(`(() => {
		const c = document.getElementById('composer');
		c.value = `+jsString(emoji)+`;
		c.dispatchEvent(new Event('input', { bubbles: true }));
		return true;
	})()`, nil)
	alice.waitJS("char count at the limit", `document.getElementById('char-count').textContent === '10 / 10' &&
		!document.getElementById('send').disabled`)
	alice.do(chromedp.Click(chromedp.ID("send")))
	alice.waitMessage("alice", emoji)

	// U+0085 is space to the server (Go's TrimSpace) but not to JavaScript's
	// trim, so only the server can refuse this text: its invalid_text error
	// shows next to the message.
	alice.eval(`(() => {
		const c = document.getElementById('composer');
		c.value = '\u0085';
		c.dispatchEvent(new Event('input', { bubbles: true }));
		return true;
	})()`, nil)
	alice.do(chromedp.Click(chromedp.ID("send")))
	alice.waitJS("server's invalid_text shown on the message", `[...document.querySelectorAll('#messages .msg.failed')].some((li) =>
		li.querySelector('.text').textContent === '\u0085' &&
		/rejected/i.test(li.querySelector('.error-text').textContent))`)
	// Sending it again cannot help: no Retry, only Discard.
	if n := alice.str(`String(document.querySelectorAll('#messages .msg.failed .retry').length)`); n != "0" {
		t.Fatalf("%s Retry buttons on a rejected text", n)
	}
	alice.do(chromedp.Click(chromedp.CSS(`#messages .msg.failed .discard`)))
	alice.waitJS("rejected message discarded", `!document.querySelector('#messages .msg.failed')`)
}

// TestKeyboardOnly: a keyboard user picks a name with Enter, lands in the
// composer, sends with Enter (Shift+Enter adds a newline instead), and after
// a reload reaches the composer again through the skip link.
func TestKeyboardOnly(t *testing.T) {
	s := chattest.Start(t)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	bob := s.DialName(t, "bob")
	bob.Join("general")

	// The name field has focus on a first visit; Enter submits it, and once
	// the room is open the focus moves on to the composer.
	if id := alice.activeID(); id != "name-input" {
		t.Fatalf("focus on load: %q, want name-input", id)
	}
	alice.do(keys("alice\r"))
	alice.waitJS("online in #general", `document.getElementById('status').textContent === 'online as alice' &&
		document.getElementById('room-title').textContent === '#general'`)
	alice.waitJS("composer focused", `document.activeElement === document.getElementById('composer')`)

	alice.do(keys("line one"), keys("\r", chromedp.ModifierShift), keys("line two"))
	if got := alice.str(`document.getElementById('composer').value`); got != "line one\nline two" {
		t.Fatalf("composer after Shift+Enter: %q", got)
	}
	time.Sleep(200 * time.Millisecond)
	if m := alice.messages(); len(m) != 0 {
		t.Fatalf("Shift+Enter sent a message: %+v", m)
	}
	alice.do(keys("\r"))
	alice.waitMessage("alice", "line one\nline two")
	if m := bob.Message("general"); m.Text != "line one\nline two" {
		t.Fatalf("server got %q", m.Text)
	}
	if got := alice.str(`document.getElementById('composer').value`); got != "" {
		t.Fatalf("composer not cleared after Enter: %q", got)
	}
	if id := alice.activeID(); id != "composer" {
		t.Fatalf("focus after sending: %q, want composer", id)
	}

	// A returning visitor is reconnected under the saved name. From the top
	// of the page, the first Tab reaches the skip link and Enter on it puts
	// the focus into the composer.
	alice.do(chromedp.Reload())
	alice.waitJS("online again with history", `document.getElementById('status').textContent === 'online as alice' &&
		document.querySelectorAll('#messages .msg').length === 1`)
	alice.do(keys("\t"))
	if id := alice.activeID(); id != "skip-link" {
		t.Fatalf("first Tab focuses %q, want the skip link", id)
	}
	alice.do(keys("\r"))
	alice.waitJS("composer focused by the skip link", `document.activeElement === document.getElementById('composer')`)
	alice.do(keys("second\r"))
	alice.waitMessage("alice", "second")
}

package web_test

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/types"

	"github.com/chromedp/chromedp"
)

// TestOfflineDirectsWaitForTheRecipient (SPEC §14): with a store, alice's
// page sends bob two directs while he has no connection; each is shown as
// kept until bob connects, not as an error. Bob's page then gets both in
// its conversation with alice, in order, marked as sent while he was away,
// before a live direct that has no mark. After a reload they are not
// delivered again: the store hands them out once, and the page keeps
// direct conversations in memory only, so the conversation is gone.
func TestOfflineDirectsWaitForTheRecipient(t *testing.T) {
	s := chattest.Start(t, chattest.WithStore(chattest.NewStoreDSN(t, "sqlite")))
	browser := newBrowser(t)
	alice, bobWS := aliceWritingToBob(t, s, browser)

	_ = bobWS.WS.Close()
	waitUserOffline(t, s, "bob")
	away := []string{"The meeting moved to 3pm", "Bring the slides, please"}
	for _, text := range away {
		alice.typeInComposer(text + "\r")
		alice.waitJS("kept for bob: "+text, `[...document.querySelectorAll('#messages .msg.stored')].some((li) =>
			li.querySelector('.text').textContent === `+jsString(text)+` &&
			li.querySelector('.stored-note').textContent === 'Delivered when bob connects')`)
	}
	for _, m := range directsShown(alice) {
		if m.Failed || m.Error != "" || !m.Stored || m.Note != "Delivered when bob connects" || m.Away != "" {
			t.Fatalf("alice's kept direct %+v: want it kept for bob, without an error\npage: %s", m, alice.snapshot())
		}
	}
	shootOffline(t, alice, "offline-sender")

	bob := openTab(t, browser, s.URL+"/", "bob")
	bob.pickName("bob")
	// As a live direct: the conversation is listed with its unread count,
	// while the page stays in the room it opened.
	bob.waitJS("conversation with alice, 2 unread", `(() => {
		const li = document.querySelector('#rooms li[data-room="@alice"]');
		return !!li && li.querySelector('.unread').textContent === '2';
	})()`)
	if got := bob.str(`document.getElementById('room-title').textContent`); got != "#general" {
		t.Fatalf("bob's page shows %q, want #general", got)
	}
	const live = "See you there"
	alice.typeInComposer(live + "\r")
	alice.waitMessage("alice", live)
	bob.waitJS("3 unread", `document.querySelector('#rooms li[data-room="@alice"] .unread').textContent === '3'`)
	bob.do(chromedp.Click(chromedp.CSS(`#rooms li[data-room="@alice"] button`)))
	bob.waitJS("conversation with alice shown", `document.getElementById('room-title').textContent === '@alice'`)
	bob.waitMessage("alice", live)

	got := directsShown(bob)
	want := append(append([]string(nil), away...), live)
	if len(got) != len(want) {
		t.Fatalf("bob sees %d directs, want %d: %+v", len(got), len(want), got)
	}
	for i, m := range got {
		wantAway := ""
		if i < len(away) {
			wantAway = "sent while you were away"
		}
		if m.Text != want[i] || m.From != "alice" || m.Away != wantAway || m.Offline != (wantAway != "") || m.Stored || m.Failed {
			t.Fatalf("bob's direct %d: %+v, want %q from alice, marked %q", i, m, want[i], wantAway)
		}
	}
	var n int
	bob.eval(`window.chat.state().rooms['@alice'].messages`, &n)
	if n != len(want) {
		t.Fatalf("bob's page holds %d directs with alice, want %d", n, len(want))
	}
	if u := bob.str(`document.querySelector('#rooms li[data-room="@alice"] .unread').textContent`); u != "" {
		t.Fatalf("unread count %q after opening the conversation", u)
	}
	shootOffline(t, bob, "offline-recipient")

	// A reload is a new connection: the store has nothing more for bob,
	// and the page kept no direct conversation (they live in memory only).
	// The join reply comes after whatever the server sends after the
	// welcome, so once #general is joined nothing more is on its way.
	bob.do(chromedp.Reload())
	bob.waitJS("online again in #general", `document.getElementById('status').textContent === 'online as bob' &&
		(window.chat.state().rooms.general || {}).joined === true`)
	var rooms []string
	bob.eval(`Object.keys(window.chat.state().rooms)`, &rooms)
	if strings.Join(rooms, ",") != "general" {
		t.Fatalf("bob's rooms after a reload: %v, want only general (nothing delivered again)\npage: %s", rooms, bob.snapshot())
	}
	if n := bob.str(`String(document.querySelectorAll('#messages .msg.offline, #rooms li[data-room="@alice"]').length)`); n != "0" {
		t.Fatalf("%s offline directs or conversations shown after a reload\npage: %s", n, bob.snapshot())
	}
}

// shownDirect is a .msg element of a direct conversation.
type shownDirect struct {
	From    string `json:"from"`
	Text    string `json:"text"`
	Offline bool   `json:"offline"` // class "offline": it waited in the store
	Away    string `json:"away"`    // its "sent while you were away" mark
	Stored  bool   `json:"stored"`  // class "stored": kept for a peer with no connection
	Note    string `json:"note"`    // its "Delivered when … connects" note
	Failed  bool   `json:"failed"`
	Error   string `json:"error"`
}

// directsShown returns the .msg elements in #messages, in document order.
func directsShown(p *tab) []shownDirect {
	p.t.Helper()
	var out []shownDirect
	p.eval(`[...document.querySelectorAll('#messages .msg')].map((li) => ({
		from: li.dataset.from || '',
		text: li.querySelector('.text').textContent,
		offline: li.classList.contains('offline'),
		away: (li.querySelector('.away') || {}).textContent || '',
		stored: li.classList.contains('stored'),
		note: (li.querySelector('.stored-note') || {}).textContent || '',
		failed: li.classList.contains('failed'),
		error: (li.querySelector('.error-text') || {}).textContent || '',
	}))`, &out)
	return out
}

// waitUserOffline waits until the server counts no connection of user
// (GET /api/users/:user), so that a direct to it is stored, not delivered.
func waitUserOffline(t *testing.T, s *chattest.Server, user string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		resp, err := http.Get(s.URL + "/api/users/" + user)
		if err != nil {
			t.Fatal(err)
		}
		var u types.UserResp
		err = json.NewDecoder(resp.Body).Decode(&u)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET /api/users/%s: %v", user, err)
		}
		if u.Connections == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still has %d connections after %v", user, u.Connections, waitTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shootOffline checks that p's page fits the phone width without scrolling
// sideways, and saves it at desktop and phone size into $CHAT_ARTIFACTS,
// when that is set.
func shootOffline(t *testing.T, p *tab, name string) {
	t.Helper()
	p.eval(`document.activeElement.blur(), true`, nil) // no focus ring in the picture
	p.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2)))
	var wide bool
	p.eval(`document.documentElement.scrollWidth > document.documentElement.clientWidth ||
		[...document.querySelectorAll('#messages .msg')].some((li) => li.getBoundingClientRect().right > document.documentElement.clientWidth)`, &wide)
	if wide {
		t.Fatalf("%s: the page is wider than a phone\npage: %s", p.who, p.snapshot())
	}
	if dir := os.Getenv("CHAT_ARTIFACTS"); dir != "" {
		saveScreenshot(t, dir, name+"-mobile.png", p.screenshot())
		p.do(chromedp.EmulateViewport(1280, 800))
		saveScreenshot(t, dir, name+"-desktop.png", p.screenshot())
	}
	p.do(chromedp.EmulateViewport(1280, 800))
}

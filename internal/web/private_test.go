package web_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v4"
)

// The page's part of private rooms (SPEC §13): rooms the server joins it to
// (`subscribed`, shown with a lock), removes it from (`removed`), refuses
// (`forbidden`), and the end of a connection whose token expired (4001).

// onlyLobbyPublic makes every room but lobby private, with the admin API on.
func onlyLobbyPublic(c *config.Config) {
	withAPIKey(c)
	c.Chat.PublicRooms = []string{"lobby"}
}

// recordSends keeps every frame the page writes on a WebSocket in
// window.__sent, so that a test can tell what the page asked for.
const recordSends = `(() => {
	window.__sent = [];
	const send = WebSocket.prototype.send;
	WebSocket.prototype.send = function (data) { window.__sent.push(String(data)); return send.call(this, data); };
})();`

// sentCommand is one command the page sent.
type sentCommand struct {
	Type string `json:"type"`
	Room string `json:"room"`
}

// sentSince lists the commands the page sent from the n-th frame on.
func (p *tab) sentSince(n int) []sentCommand {
	p.t.Helper()
	var frames []string
	p.eval(`window.__sent.slice(`+strconv.Itoa(n)+`)`, &frames)
	var out []sentCommand
	for _, f := range frames {
		for _, line := range strings.Split(f, "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			var c sentCommand
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				p.t.Fatalf("%s: the page sent %q: %v", p.who, line, err)
			}
			out = append(out, c)
		}
	}
	return out
}

// sentCount is how many frames the page has sent.
func (p *tab) sentCount() int {
	p.t.Helper()
	var n int
	p.eval(`window.__sent.length`, &n)
	return n
}

// hasToast reports (as a JavaScript expression) whether a toast matches re.
func hasToast(re string) string {
	return `[...document.querySelectorAll('#errors .toast-text')].some((e) => ` + re + `.test(e.textContent))`
}

// TestPrivateRoomSubscribedAndRemoved: the admin API grants alice a private
// room while her page is open: the page lists it with a lock, shows its
// history and members, and chats in it with a WebSocket client. A reconnect
// re-joins it (still locked) without a gap. The admin API then revokes the
// grant: the page drops the room, says so, sends no leave, and a later
// reconnect does not join it again.
func TestPrivateRoomSubscribedAndRemoved(t *testing.T) {
	s := chattest.Start(t, onlyLobbyPublic)
	proxy := startProxy(t, s.URL)
	browser := newBrowser(t)
	alice := openTabWith(t, browser, proxy.URL()+"/", "alice", recordSends)
	alice.pickName("alice")
	alice.joinRoom("lobby")
	// The default room (general) is private here: its refusal is not worth a word.
	if e := alice.str(`document.getElementById('join-error').textContent`); e != "" {
		t.Fatalf("join error %q for the default room", e)
	}

	admin(t, s, http.MethodPost, "/api/rooms/team/messages", `{"text":"welcome to <b>team</b>"}`)
	bob := s.DialName(t, "bob")
	admin(t, s, http.MethodPut, "/api/rooms/team/users/bob", "")
	bob.WaitFor("subscribed", func(e chattest.Event) bool { return e.Str("room") == "team" })

	admin(t, s, http.MethodPut, "/api/rooms/team/users/alice", "")
	alice.waitJS("team listed with a lock", `(() => {
		const r = window.chat.state().rooms.team;
		const lock = document.querySelector('#rooms li[data-room="team"] .lock');
		return r && r.joined && r.locked && !!lock && lock.getAttribute('role') === 'img' &&
			/private room/i.test(lock.getAttribute('aria-label')) && !!lock.title &&
			/private room/i.test(document.querySelector('#rooms li[data-room="team"] button').getAttribute('aria-label'));
	})()`)
	alice.waitJS("told it was added", hasToast(`/added to the private room #team/`))
	if cur := alice.str(`window.chat.currentRoom()`); cur != "lobby" {
		t.Fatalf("current room %q after being added to team, want lobby (the page stays where it is)", cur)
	}
	if alice.str(`String(document.getElementById('room-lock').hidden)`) != "true" {
		t.Fatalf("lobby's header shows a lock")
	}
	if n := alice.str(`String(document.querySelectorAll('#rooms li[data-room="lobby"] .lock').length)`); n != "0" {
		t.Fatalf("lobby is listed with a lock")
	}

	alice.do(chromedp.Click(chromedp.CSS(`#rooms li[data-room="team"] button`)))
	alice.waitJS("team's header with a lock", `document.getElementById('room-title').textContent === '#team' &&
		!document.getElementById('room-lock').hidden &&
		getComputedStyle(document.getElementById('room-lock')).display !== 'none'`)
	alice.waitMessage("system", "welcome to <b>team</b>")
	alice.waitMembers("alice", "bob")
	if n := alice.str(`String(document.querySelectorAll('#messages b').length)`); n != "0" {
		t.Fatalf("history rendered as HTML")
	}

	alice.typeInComposer("hello team\r")
	m := bob.WaitFor("message", func(e chattest.Event) bool { return e.Str("room") == "team" && e.Str("from") == "alice" })
	if m.Str("text") != "hello team" {
		t.Fatalf("bob got %s", m)
	}
	alice.waitMessage("alice", "hello team")
	bob.Say("team", "hi alice")
	alice.waitMessage("bob", "hi alice")

	// A reconnect while the grant holds: team is re-joined with `since`, keeps its lock, misses nothing.
	proxy.cut(true)
	alice.waitJS("reconnecting", `document.getElementById('status').dataset.state === 'reconnecting'`)
	bob.Say("team", "said while alice was away")
	proxy.allow()
	alice.waitJS("online again", `document.getElementById('status').dataset.state === 'online'`)
	alice.waitMessage("bob", "said while alice was away")
	alice.waitJS("team re-joined, locked", `(() => {
		const r = window.chat.state().rooms.team;
		return r && r.joined && r.locked && !!document.querySelector('#rooms li[data-room="team"] .lock') &&
			!document.getElementById('room-lock').hidden;
	})()`)
	if got := strings.Join(texts(alice.messages()), "|"); got != "welcome to <b>team</b>|hello team|hi alice|said while alice was away" {
		t.Fatalf("team after the reconnect: %s", got)
	}

	// Revoked: the page drops team and says so, without sending a leave.
	before := alice.sentCount()
	admin(t, s, http.MethodDelete, "/api/rooms/team/users/alice", "")
	alice.waitJS("team dropped", `!window.chat.state().rooms.team && !document.querySelector('#rooms li[data-room="team"]')`)
	alice.waitJS("told it was removed", hasToast(`/removed from #team/`))
	alice.waitJS("back in lobby", `document.getElementById('room-title').textContent === '#lobby' &&
		document.getElementById('room-lock').hidden`)
	bob.WaitFor("left", func(e chattest.Event) bool { return e.Str("room") == "team" && e.Str("user") == "alice" })
	for _, c := range alice.sentSince(before) {
		if c.Room == "team" {
			t.Fatalf("the page sent %+v for team after being removed", c)
		}
	}

	// A later reconnect re-joins lobby, and not team.
	before = alice.sentCount()
	proxy.cut(true)
	alice.waitJS("reconnecting", `document.getElementById('status').dataset.state === 'reconnecting'`)
	proxy.allow()
	alice.waitJS("online again", `document.getElementById('status').dataset.state === 'online'`)
	alice.waitJS("lobby re-joined", `window.chat.state().rooms.lobby.joined`)
	joinedLobby := false
	for _, c := range alice.sentSince(before) {
		if c.Room == "team" {
			t.Fatalf("the page sent %+v for team after the reconnect", c)
		}
		if c.Type == "join" && c.Room == "lobby" {
			joinedLobby = true
		}
	}
	if !joinedLobby {
		t.Fatalf("no join of lobby seen after the reconnect: %+v", alice.sentSince(before))
	}
	if _, ok := roomState(alice)["team"]; ok {
		t.Fatalf("team is back after the reconnect: %s", alice.snapshot())
	}
}

// roomState is the page's rooms, by key.
func roomState(p *tab) map[string]json.RawMessage {
	p.t.Helper()
	var rooms map[string]json.RawMessage
	p.eval(`window.chat.state().rooms`, &rooms)
	return rooms
}

// TestPrivateRoomJoinIsForbidden: joining a private room without access
// says so next to the join box, and the room is not added; typing again
// clears the message.
func TestPrivateRoomJoinIsForbidden(t *testing.T) {
	s := chattest.Start(t, onlyLobbyPublic)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")

	alice.do(chromedp.Focus(chromedp.ID("room-input")), keys("team2\r"))
	alice.waitJS("forbidden shown by the join box", `/#team2 is a private room/.test(document.getElementById('join-error').textContent) &&
		getComputedStyle(document.getElementById('join-error')).display !== 'none' &&
		document.getElementById('room-input').getAttribute('aria-invalid') === 'true'`)
	if _, ok := roomState(alice)["team2"]; ok {
		t.Fatalf("team2 added although forbidden: %s", alice.snapshot())
	}
	if n := alice.str(`String(document.querySelectorAll('#rooms li[data-room="team2"]').length)`); n != "0" {
		t.Fatalf("team2 listed although forbidden")
	}
	if title := alice.str(`document.getElementById('room-title').textContent`); title != "#lobby" {
		t.Fatalf("room title %q after a forbidden join, want #lobby", title)
	}
	// Typing in the join box again clears the message.
	alice.do(chromedp.Focus(chromedp.ID("room-input")), keys("x"))
	alice.waitJS("message cleared", `document.getElementById('join-error').textContent === '' &&
		!document.getElementById('room-input').hasAttribute('aria-invalid')`)
}

// TestPrivateRoomRevokedWhileOfflineIsDropped: the grant is revoked while
// the page is cut off; its re-join is answered forbidden, and the page drops
// the room with the same notice as a removal, keeping its other rooms.
func TestPrivateRoomRevokedWhileOfflineIsDropped(t *testing.T) {
	s := chattest.Start(t, onlyLobbyPublic)
	proxy := startProxy(t, s.URL)
	browser := newBrowser(t)
	alice := openTab(t, browser, proxy.URL()+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")
	admin(t, s, http.MethodPut, "/api/rooms/team/users/alice", "")
	alice.waitJS("team listed", `!!(window.chat.state().rooms.team || {}).joined`)

	proxy.cut(true)
	alice.waitJS("reconnecting", `document.getElementById('status').dataset.state === 'reconnecting'`)
	admin(t, s, http.MethodDelete, "/api/rooms/team/users/alice", "")
	proxy.allow()
	alice.waitJS("online again", `document.getElementById('status').dataset.state === 'online'`)
	alice.waitJS("team dropped", `!window.chat.state().rooms.team && !document.querySelector('#rooms li[data-room="team"]')`)
	alice.waitJS("told it was removed", hasToast(`/removed from #team/`))
	alice.waitJS("lobby still joined", `window.chat.state().rooms.lobby.joined`)
}

// expiringToken is an HS256 token of user, signed with secret, that
// expires in d.
func expiringToken(t *testing.T, secret, user string, d time.Duration) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"name": user,
		"exp":  time.Now().Add(d).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestExpiredTokenStopsThePage: the server closes a connection whose token
// expires with 4001 (over SSE: the close event carries it); the page says the
// session expired and what to do, and does not reconnect.
func TestExpiredTokenStopsThePage(t *testing.T) {
	for _, tc := range []struct{ name, query string }{
		{"WebSocket", ""},
		{"SSE", "transport=sse&"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const secret = "token-secret"
			s := chattest.Start(t, func(c *config.Config) { c.Auth.AccessSecret = secret })
			front := startFront(t, s.URL)
			browser := newBrowser(t)
			alice := openTab(t, browser, front.URL+"/", "alice")

			tok := expiringToken(t, secret, "alice", 4*time.Second)
			alice.do(chromedp.Navigate(front.URL+"/?"+tc.query+"token="+url.QueryEscape(tok)), chromedp.WaitVisible(chromedp.ID("status")))
			alice.pickName("alice")
			alice.waitTransport(tc.name)
			alice.waitJS("session expired", `document.getElementById('status').dataset.state === 'offline' &&
				/expired/i.test(document.getElementById('status').textContent) &&
				`+hasToast(`/session expired: reload the page with a new token/i`))
			opens := front.ws.Load() + front.sse.Load()
			for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
				if st := alice.str(`document.getElementById('status').dataset.state`); st != "offline" {
					t.Fatalf("status %q after the token expired, want offline: %s", st, alice.snapshot())
				}
			}
			if n := front.ws.Load() + front.sse.Load(); n != opens || n != 1 {
				t.Fatalf("%d connections opened (%d when it expired), want 1: the page reconnected", n, opens)
			}
			// The message stays: it is what to do next.
			if !strings.Contains(alice.snapshot(), "reload the page with a new token") {
				t.Fatalf("expired message gone: %s", alice.snapshot())
			}
		})
	}
}

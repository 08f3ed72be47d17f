package web_test

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/chromedp/chromedp"
)

// largeRooms makes every room of more than limit users a large room (SPEC
// §15): presence events, at most one per 200 ms, instead of joined/left.
func largeRooms(limit int) func(*config.Config) {
	return func(c *config.Config) {
		c.Chat.PresenceEventLimit = limit
		c.Chat.PresenceInterval = 200 * time.Millisecond
	}
}

// membersCap is the number of names the page renders before "and N more".
const membersCap = 100

// memberView is what the page shows of the current room's presence.
type memberView struct {
	Count   string   `json:"count"`   // the members panel's "(N)"
	Sidebar string   `json:"sidebar"` // the room's count in the sidebar
	Names   []string `json:"names"`   // #members, in page order
	More    string   `json:"more"`    // the "and N more" line; "" when hidden
}

func (p *tab) memberView(room string) memberView {
	p.t.Helper()
	var v memberView
	p.eval(`(() => {
		const more = document.getElementById('members-more');
		const side = document.querySelector('#rooms li[data-room=`+jsString(room)+`] .count');
		return {
			count: document.getElementById('member-count').textContent,
			sidebar: side ? side.textContent : '',
			names: [...document.querySelectorAll('#members li')].map((li) => li.dataset.user),
			more: more.hidden ? '' : document.getElementById('members-more-text').textContent,
		};
	})()`, &v)
	return v
}

// waitCount waits until the page shows n users present in room, in the
// members panel and in the sidebar.
func (p *tab) waitCount(room string, n int) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("%d users in %s", n, room), `document.getElementById('member-count').textContent === '(`+fmt.Sprint(n)+`)' &&
		document.querySelector('#rooms li[data-room=`+jsString(room)+`] .count').textContent === '`+fmt.Sprint(n)+`'`)
}

// waitMore waits until the "and N more" line reads text ("": hidden).
func (p *tab) waitMore(text string) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("more line %q", text), `(() => {
		const more = document.getElementById('members-more');
		return `+jsString(text)+` === (more.hidden ? '' : document.getElementById('members-more-text').textContent);
	})()`)
}

// TestLargeRoomShowsCountAndPresenceDiffs: with Chat.PresenceEventLimit = 3
// a room of six users sends presence events instead of joined/left. The
// page adds the users they name, shows the count they carry (panel and
// sidebar), and removes users who leave or disconnect, lowering the count.
func TestLargeRoomShowsCountAndPresenceDiffs(t *testing.T) {
	s := chattest.Start(t, largeRooms(3))
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("hall")

	users := map[string]*chattest.Client{}
	for _, name := range []string{"u1", "u2", "u3", "u4", "u5"} {
		users[name] = s.DialName(t, name)
		users[name].Join("hall")
	}
	// The room is large: its members hear of the last joins by presence.
	users["u1"].WaitFor("presence", func(e chattest.Event) bool { return e.Str("room") == "hall" && e.Int("count") == 6 })
	alice.waitMembers("alice", "u1", "u2", "u3", "u4", "u5")
	alice.waitCount("hall", 6)
	alice.waitMore("")

	users["u4"].OK("leave", map[string]any{"room": "hall"}, nil)
	alice.waitMembers("alice", "u1", "u2", "u3", "u5")
	alice.waitCount("hall", 5)
	_ = users["u5"].WS.Close() // a disconnect leaves too
	alice.waitMembers("alice", "u1", "u2", "u3")
	alice.waitCount("hall", 4)
	alice.waitMore("")
	if v := alice.memberView("hall"); v.Names[0] != "alice" {
		t.Fatalf("member list %v: you first", v.Names)
	}
}

// TestLargeRoomRendersAtMostTheCapOfNames: 150 users join a room the page is
// in (Chat.PresenceEventLimit = 3, so the page learns of them only from
// presence events, which name 100 users at most). The page shows the count,
// 151, and renders at most 100 names, then "and N more"; "Show more", by
// keyboard, lists everyone. A second page that joins the room gets only a
// first page of members with its join: it shows the count, the names it has
// and "and N more", and "Show more" pages `members` in, 100 names more per
// click. Users leaving lower the count on both.
func TestLargeRoomRendersAtMostTheCapOfNames(t *testing.T) {
	s := chattest.Start(t, largeRooms(3))
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.do(chromedp.EmulateViewport(1280, 800))
	alice.pickName("alice")
	alice.joinRoom("crowd")

	all := map[string]bool{"alice": true}
	var crowd []*chattest.Client
	for i := 1; i <= 150; i++ {
		name := fmt.Sprintf("m%03d", i)
		c := s.DialName(t, name)
		c.Join("crowd")
		crowd = append(crowd, c)
		all[name] = true
	}
	alice.waitCount("crowd", 151)
	alice.waitJS("the rest counted", `(() => {
		const n = document.querySelectorAll('#members li').length;
		return n > 0 && document.getElementById('members-more-text').textContent === 'and ' + (151 - n) + ' more';
	})()`)
	v := alice.memberView("crowd")
	checkNames(t, "alice", v.Names, all)
	if len(v.Names) > membersCap {
		t.Fatalf("%d names rendered, want at most %d", len(v.Names), membersCap)
	}

	// "Show more" by keyboard: everyone, and no more line.
	alice.do(chromedp.Focus(chromedp.ID("members-show-more")), keys("\r"))
	alice.waitJS("everyone listed", `document.querySelectorAll('#members li').length === 151`)
	alice.waitMore("")
	alice.waitJS("focus kept in the list", `document.activeElement === document.querySelector('#members li:last-child button')`)
	checkNames(t, "alice", alice.memberView("crowd").Names, all)

	// A page joining the large room: its join reply holds a first page of
	// members (sorted by user; however long the server makes it) and the
	// count. The page shows both, you first, then "and N more"; "Show more"
	// reads the rest with `members` pages after the last user it has.
	bob := openTab(t, browser, s.URL+"/", "bob")
	bob.do(chromedp.EmulateViewport(1280, 800))
	bob.pickName("bob")
	bob.joinRoom("crowd")
	all["bob"] = true
	bob.waitCount("crowd", 152)
	bob.waitJS("the rest counted", `(() => {
		const n = document.querySelectorAll('#members li').length;
		return n > 0 && document.getElementById('members-more-text').textContent === 'and ' + (152 - n) + ' more';
	})()`)
	v = bob.memberView("crowd")
	sorted := slices.Sorted(maps.Keys(all))
	first := slices.DeleteFunc(slices.Clone(sorted[:len(v.Names)]), func(u string) bool { return u == "bob" })
	if want := append([]string{"bob"}, first...); len(v.Names) > membersCap || !slices.Equal(v.Names, want) {
		t.Fatalf("bob's first members: %v, want the join reply's first page %v, you first", v.Names, want)
	}
	alice.waitCount("crowd", 152)
	alice.waitJS("bob listed for alice", `!!document.querySelector('#members li[data-user="bob"]')`)
	shootLargeRoom(t, bob, "large-room")

	// Each click shows up to 100 names more.
	for shown := len(v.Names); shown < 152; {
		next := min(152, max(shown, membersCap)+membersCap)
		if shown < membersCap {
			next = membersCap
		}
		bob.do(chromedp.Click(chromedp.ID("members-show-more")))
		bob.waitJS(fmt.Sprintf("%d names listed", next), `document.querySelectorAll('#members li').length === `+fmt.Sprint(next))
		want := ""
		if next < 152 {
			want = fmt.Sprintf("and %d more", 152-next)
		}
		bob.waitMore(want)
		checkNames(t, "bob", bob.memberView("crowd").Names, all)
		shown = next
	}

	// Ten leave: both pages count 142 and list none of them.
	for _, c := range crowd[:10] {
		_ = c.WS.Close()
		delete(all, c.Welcome.Str("user"))
	}
	for _, p := range []*tab{alice, bob} {
		p.waitCount("crowd", 142)
		p.waitJS("the ten gone", `document.querySelectorAll('#members li').length === 142 &&
			!document.querySelector('#members li[data-user="m001"], #members li[data-user="m010"]')`)
		checkNames(t, p.who, p.memberView("crowd").Names, all)
	}
}

// checkNames fails unless names starts with me and holds distinct users of all.
func checkNames(t *testing.T, me string, names []string, all map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, n := range names {
		if !all[n] || seen[n] {
			t.Fatalf("member list %v: %q is unknown or listed twice", names, n)
		}
		seen[n] = true
	}
	if len(names) == 0 || names[0] != me {
		t.Fatalf("member list %v: want %s first", names, me)
	}
}

// shootLargeRoom saves screenshots of p at desktop width (the member list's
// top and its end) and at phone width into $CHAT_ARTIFACTS, when it is set.
func shootLargeRoom(t *testing.T, p *tab, name string) {
	t.Helper()
	dir := os.Getenv("CHAT_ARTIFACTS")
	if dir == "" {
		return
	}
	p.eval(`document.activeElement.blur(), true`, nil) // no focus ring in the picture
	p.do(chromedp.EmulateViewport(1280, 800))
	saveScreenshot(t, dir, name+"-desktop.png", p.screenshot())
	p.eval(`(() => { const m = document.querySelector('.members-panel'); m.scrollTop = m.scrollHeight; return true; })()`, nil)
	saveScreenshot(t, dir, name+"-desktop-end.png", p.screenshot())
	p.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2)))
	saveScreenshot(t, dir, name+"-mobile.png", p.screenshot())
	p.do(chromedp.EmulateViewport(1280, 800))
}

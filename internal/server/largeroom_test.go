package server_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"
)

// largeRooms makes every room of more than limit users a large room, with
// presence events every 100 ms so that the tests wait little.
func largeRooms(limit int) func(*config.Config) {
	return func(c *config.Config) {
		c.Chat.PresenceEventLimit = limit
		c.Chat.PresenceInterval = 100 * time.Millisecond
	}
}

// presenceEvent waits for c's next presence event of room.
func presenceEvent(t *testing.T, c *chattest.Client, room string) protocol.PresenceDiff {
	t.Helper()
	e := c.WaitFor("presence", func(e chattest.Event) bool { return e.Str("room") == room })
	var p protocol.PresenceDiff
	if err := e.Decode(&p); err != nil {
		t.Fatal(err)
	}
	return p
}

// quietPresence asserts that no joined, left or presence event of any room
// is in c's backlog or arrives within d.
func quietPresence(t *testing.T, c *chattest.Client, d time.Duration) {
	t.Helper()
	for _, typ := range []string{"joined", "left", "presence"} {
		c.Quiet(typ, d/3)
	}
}

// Up to Chat.PresenceEventLimit users a room is as it was (joined and left
// per connection); beyond it members get one presence event per interval,
// with the users that came and went and the exact count, and nothing per
// connection. Back within the limit, joined and left return.
func TestLargeRoomSendsPresenceDiffsInsteadOfJoinedAndLeft(t *testing.T) {
	s := chattest.Start(t, fast, largeRooms(3))
	watcher := s.DialName(t, "watcher")
	if j := joinCounted(t, watcher, "hall"); j.Count != 1 || len(j.Members) != 1 {
		t.Fatalf("join reply: count %d, members %+v", j.Count, j.Members)
	}
	watcher.WaitFor("joined", nil) // its own
	u := map[string]*chattest.Client{}
	for _, name := range []string{"u1", "u2"} {
		u[name] = s.DialName(t, name)
		u[name].Join("hall")
		watcher.WaitFor("joined", func(e chattest.Event) bool { return e.Str("user") == name })
	}
	// The fourth user takes the room over the limit: a presence event, no joined.
	u["u3"] = s.DialName(t, "u3")
	u["u3"].Join("hall")
	if p := presenceEvent(t, watcher, "hall"); p.Count != 4 || !slices.Equal(p.Joined, []string{"u3"}) || len(p.Left) != 0 {
		t.Fatalf("presence %+v, want count 4, joined [u3]", p)
	}
	// A second connection of a present user changes nothing.
	s.DialName(t, "u3").Join("hall")
	// Users come and go between two events: one event nets them out.
	for _, name := range []string{"u4", "u5"} {
		u[name] = s.DialName(t, name)
		u[name].Join("hall")
	}
	u["u1"].OK("leave", map[string]any{"room": "hall"}, nil)
	if p := presenceEvent(t, watcher, "hall"); p.Count != 5 || !slices.Equal(p.Joined, []string{"u4", "u5"}) || !slices.Equal(p.Left, []string{"u1"}) {
		t.Fatalf("presence %+v, want count 5, joined [u4 u5], left [u1]", p)
	}
	// A user who joins and leaves within one interval is in neither list.
	u6 := s.DialName(t, "u6")
	u6.Join("hall")
	u6.OK("leave", map[string]any{"room": "hall"}, nil)
	_ = u["u5"].WS.Close() // a disconnect leaves too
	if p := presenceEvent(t, watcher, "hall"); p.Count != 4 || len(p.Joined) != 0 || !slices.Equal(p.Left, []string{"u5"}) {
		t.Fatalf("presence %+v, want count 4, left [u5]", p)
	}
	watcher.Quiet("joined", time.Millisecond) // none came for the large room, backlog included
	watcher.Quiet("left", time.Millisecond)
	// The leave that brings the room back to the limit is still counted as
	// large; the next one is a left event again.
	u["u4"].OK("leave", map[string]any{"room": "hall"}, nil)
	if p := presenceEvent(t, watcher, "hall"); p.Count != 3 || !slices.Equal(p.Left, []string{"u4"}) {
		t.Fatalf("presence %+v, want count 3, left [u4]", p)
	}
	u["u2"].OK("leave", map[string]any{"room": "hall"}, nil)
	if e := watcher.WaitFor("left", nil); e.Str("user") != "u2" {
		t.Fatalf("left %s, want u2", e)
	}
	quietPresence(t, watcher, 300*time.Millisecond)
}

// joinCounted joins room and returns the reply with its members' count.
func joinCounted(t *testing.T, c *chattest.Client, room string) membersPage {
	t.Helper()
	var j membersPage
	c.OK("join", map[string]any{"room": room}, &j)
	return j
}

type membersPage struct {
	Room    string            `json:"room"`
	Members []protocol.Member `json:"members"`
	Count   int               `json:"count"`
}

// members pages a room of many users with limit and after, with the total
// count on every page; the join reply holds the first page (100 users of a
// large room).
func TestMembersOfALargeRoomArePaged(t *testing.T) {
	s := chattest.Start(t, fast, largeRooms(4))
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("m%02d", i)
		names = append(names, name)
		s.DialName(t, name).Join("big")
	}
	s.DialName(t, "m03").Join("big") // a second connection of one user
	c := s.DialName(t, "pager")
	j := joinCounted(t, c, "big")
	names = append(names, "pager")
	// The reply to a join of a large room lists its first 100 users: all 11.
	if j.Count != 11 || len(j.Members) != 11 || j.Members[0].User != "m00" {
		t.Fatalf("join reply: count %d, members %+v; want 11 and all of them", j.Count, j.Members)
	}
	var seen []string
	after := ""
	for {
		var page membersPage
		c.OK("members", map[string]any{"room": "big", "limit": 3, "after": after}, &page)
		if page.Count != 11 {
			t.Fatalf("page after %q: count %d, want 11", after, page.Count)
		}
		if len(page.Members) == 0 {
			break
		}
		for _, m := range page.Members {
			seen = append(seen, m.User)
			if want := 1 + btoi(m.User == "m03"); m.Connections != want {
				t.Fatalf("%s has %d connections, want %d", m.User, m.Connections, want)
			}
		}
		after = page.Members[len(page.Members)-1].User
	}
	if !slices.Equal(seen, names) {
		t.Fatalf("pages listed %v, want %v", seen, names)
	}
	var whole membersPage
	c.OK("members", map[string]any{"room": "big"}, &whole) // the default page: PresenceEventLimit
	if len(whole.Members) != 4 || whole.Count != 11 {
		t.Fatalf("default page %+v", whole)
	}
	c.Fail("members", map[string]any{"room": "big", "limit": 1001}, protocol.CodeBadRequest)
	c.Fail("members", map[string]any{"room": "big", "limit": -1}, protocol.CodeBadRequest)

	var rest membersPage
	call(t, s, http.MethodGet, "/api/rooms/big/members?limit=2&after=m08", "", nil).ok(t, &rest)
	if rest.Count != 11 || len(rest.Members) != 2 || rest.Members[0].User != "m09" || rest.Members[1].User != "pager" {
		t.Fatalf("REST page %+v", rest)
	}
	call(t, s, http.MethodGet, "/api/rooms/big/members?limit=5000", "", nil).wantError(t, http.StatusBadRequest, protocol.CodeBadRequest)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// In Redis mode the count is cluster-wide: users on both replicas are
// counted once each, and the members of either replica hear of both.
func TestLargeRoomCountIsClusterWide(t *testing.T) {
	nodes := cluster(t, 2, largeRooms(2))
	a := nodes[0].DialName(t, "a-watcher")
	a.Join("town")
	b := nodes[1].DialName(t, "b-watcher")
	b.Join("town")
	// Users join on both replicas; "both" has a connection on each.
	for i, name := range []string{"x", "y", "both", "both"} {
		nodes[i%2].DialName(t, name).Join("town")
	}
	want := []string{"both", "x", "y"}
	for _, w := range []*chattest.Client{a, b} {
		var joined []string
		count := 0
		for !slices.Equal(joined, want) || count != 5 {
			p := presenceEvent(t, w, "town")
			joined = append(joined, p.Joined...)
			slices.Sort(joined)
			joined = slices.Compact(joined)
			count = p.Count
		}
	}
	var page membersPage
	a.OK("members", map[string]any{"room": "town", "limit": 10}, &page)
	if page.Count != 5 || len(page.Members) != 5 || page.Members[0].User != "a-watcher" || page.Members[2].Connections != 2 {
		t.Fatalf("members on replica A: %+v", page)
	}
}

// The reply to a join of a large room lists its first 100 users by name,
// and counts them all.
func TestJoinReplyOfALargeRoomListsItsFirstHundredMembers(t *testing.T) {
	s := chattest.Start(t, fast, largeRooms(3))
	for i := range 105 {
		ws := rawDial(t, s, fmt.Sprintf("user%03d", i))
		if err := ws.WriteJSON(map[string]any{"type": "join", "room": "crowd", "id": 1}); err != nil {
			t.Fatal(err)
		}
		_ = ws.SetReadDeadline(time.Now().Add(chattest.Timeout))
		for replied := false; !replied; {
			_, data, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			replied = strings.Contains(string(data), `"type":"reply"`)
		}
	}
	j := joinCounted(t, s.DialName(t, "late"), "crowd")
	if j.Count != 106 || len(j.Members) != 100 || j.Members[0].User != "late" || j.Members[99].User != "user098" {
		t.Fatalf("join reply: count %d, %d members from %v to %v", j.Count, len(j.Members), j.Members[0], j.Members[len(j.Members)-1])
	}
}

// Joins into a room that messages keep arriving in read history a few
// messages behind the node: each joiner still gets every message after its
// reply's seq once, in order, and no join is refused as too busy.
func TestJoinsIntoABusyRoomMissNothing(t *testing.T) {
	s := chattest.Start(t, fast)
	sender := s.DialName(t, "sender")
	sender.Join("busy")
	const joiners, sends = 20, 400
	done := make(chan int64)
	go func() {
		for i := range sends {
			sender.Send(map[string]any{"type": "send", "room": "busy", "text": fmt.Sprint(i)})
			time.Sleep(time.Millisecond)
		}
		done <- sender.Say("busy", "last") // after every send before it
	}()
	type joined struct {
		c *chattest.Client
		s int64 // the seq of its join reply
	}
	var all []joined
	for i := range joiners {
		c := s.DialName(t, fmt.Sprintf("joiner%d", i))
		var j struct {
			Seq int64 `json:"seq"`
		}
		c.OK("join", map[string]any{"room": "busy"}, &j)
		all = append(all, joined{c: c, s: j.Seq})
	}
	last := <-done
	for _, x := range all {
		for want := x.s + 1; want <= last; want++ {
			if m := x.c.Message("busy"); m.Seq != want {
				t.Fatalf("%s joined at seq %d and got seq %d, want %d", x.c.Welcome.Str("user"), x.s, m.Seq, want)
			}
		}
	}
}

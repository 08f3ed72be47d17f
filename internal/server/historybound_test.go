package server_test

import (
	"fmt"
	"strings"
	"testing"

	"chat/internal/chattest"
	"chat/internal/config"
)

// historyBound is small enough that a few rooms of one long message fill
// it: each costs about a kilobyte in the memory broker's estimate.
const historyBound = 8 << 10

// fillOtherRooms sends one long message to each of count rooms through c,
// joining and leaving each (a connection may be in only Chat.MaxRooms), and
// calls between after each.
func fillOtherRooms(c *chattest.Client, count int, between func()) {
	text := strings.Repeat("x", 500)
	for i := 0; i < count; i++ {
		room := fmt.Sprint("filler", i)
		c.Join(room)
		c.Say(room, text)
		c.OK("leave", map[string]any{"room": room}, nil)
		between()
	}
}

// rejoin joins room on a new connection of alice with since and returns the result.
func rejoin(t *testing.T, s *chattest.Server, room string, since chattest.JoinResult, seq int64) chattest.JoinResult {
	t.Helper()
	back := s.DialName(t, "alice")
	var r chattest.JoinResult
	back.OK("join", map[string]any{"room": room, "since": map[string]any{"epoch": since.Epoch, "seq": seq}}, &r)
	return r
}

func TestHistoryBoundEvictedRoomRejoinsUnrecoveredInANewEpoch(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) { c.Chat.HistoryMaxBytes = historyBound })
	alice := s.DialName(t, "alice")
	old := alice.Join("old")
	seq := alice.Say("old", "before the others filled the history")
	_ = alice.WS.Close()

	fillOtherRooms(s.DialName(t, "bob"), 40, func() {})

	r := rejoin(t, s, "old", old, seq)
	if r.Recovered || r.Epoch == "" || r.Epoch == old.Epoch || r.Seq != 0 || len(r.History) != 0 {
		t.Fatalf("rejoin of an evicted room = %+v, want recovered: false, a new epoch (not %q), seq 0, no history", r, old.Epoch)
	}
	carol := s.DialName(t, "carol")
	carol.Join("old")
	if got := carol.Say("old", "after"); got != 1 {
		t.Fatalf("first message after eviction has seq %d, want 1", got)
	}
}

func TestHistoryBoundRecentlyReadRoomIsRecovered(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) { c.Chat.HistoryMaxBytes = historyBound })
	alice := s.DialName(t, "alice")
	kept := alice.Join("kept")
	alice.Say("kept", "one")
	seq := alice.Say("kept", "two")
	_ = alice.WS.Close()

	reader := s.DialName(t, "dave")
	fillOtherRooms(s.DialName(t, "bob"), 40, func() {
		reader.OK("history", map[string]any{"room": "kept"}, nil) // a read is a use: kept stays the most recent
	})

	r := rejoin(t, s, "kept", kept, seq-1)
	if !r.Recovered || r.Epoch != kept.Epoch || r.Seq != seq || len(r.History) != 1 || r.History[0].Seq != seq {
		t.Fatalf("rejoin of a room read recently = %+v, want recovered: true in epoch %q with seq %d", r, kept.Epoch, seq)
	}
}

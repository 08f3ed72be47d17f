package brokertest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"chat/internal/broker"
)

// The store's side of the contract (SPEC §14): with Options.Heads a room
// continues from the store's head, and every published room is handed to
// ClaimUnstored until MarkStored confirms it.

// heads is a fake store's heads: a room it knows continues there.
type heads struct {
	mu    sync.Mutex
	rooms map[string]broker.Head
	err   error
	asked int
}

func (h *heads) head(_ context.Context, room string) (broker.Head, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.asked++
	return h.rooms[room], h.err
}

func storeOptions(h *heads) broker.Options {
	opts := Options
	opts.Heads = h.head
	return opts
}

func (s *suite) roomWithoutSequenceContinuesFromTheStoresHead(t *testing.T) {
	h := &heads{rooms: map[string]broker.Head{"lobby": {Epoch: "e0", Seq: 41}}}
	e := s.env(t, storeOptions(h))
	a, b := e.node(), e.node()
	subscribe(t, b, broker.Room("lobby"))
	if m := publish(t, a, broker.Publication{Room: "lobby", From: "alice"}); m.Epoch != "e0" || m.Seq != 42 {
		t.Fatalf("first publish of a room the store knows = (%q, %d), want (e0, 42)", m.Epoch, m.Seq)
	}
	if got := b.waitMessages(t, "lobby", 1); got[0].Seq != 42 {
		t.Fatalf("subscriber got seq %d, want 42", got[0].Seq)
	}
	if hist := history(t, b, "lobby", broker.HistoryQuery{}); hist.Epoch != "e0" || hist.Seq != 42 || len(hist.Messages) != 1 {
		t.Fatalf("history = (%q, %d, %d messages), want (e0, 42, 1)", hist.Epoch, hist.Seq, len(hist.Messages))
	}
	fresh := history(t, b, "new", broker.HistoryQuery{})
	if fresh.Epoch == "" || fresh.Seq != 0 {
		t.Fatalf("history of a room the store does not know = (%q, %d), want a new epoch at 0", fresh.Epoch, fresh.Seq)
	}
	h.mu.Lock()
	asked := h.asked
	h.mu.Unlock()
	publishN(t, a, "lobby", 3)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.asked != asked {
		t.Fatalf("the store was asked %d more times for a room with a sequence, want 0", h.asked-asked)
	}
}

func (s *suite) roomWhoseHistoryExpiredContinuesFromTheStoresHead(t *testing.T) {
	h := &heads{rooms: map[string]broker.Head{}}
	opts := storeOptions(h)
	opts.HistoryTTL = 200 * time.Millisecond
	e := s.env(t, opts)
	n := e.node()
	old := publishN(t, n, "lobby", 2)
	h.mu.Lock()
	h.rooms["lobby"] = broker.Head{Epoch: old[1].Epoch, Seq: old[1].Seq}
	h.mu.Unlock()
	e.cluster.Advance(t, opts.HistoryTTL+300*time.Millisecond)
	if hist := history(t, n, "lobby", broker.HistoryQuery{}); hist.Epoch != old[0].Epoch || hist.Seq != 2 || len(hist.Messages) != 0 {
		t.Fatalf("after HistoryTTL history = (%q, %d, %d messages), want (%q, 2, none)", hist.Epoch, hist.Seq, len(hist.Messages), old[0].Epoch)
	}
	if m := publish(t, n, broker.Publication{Room: "lobby", From: "alice"}); m.Epoch != old[0].Epoch || m.Seq != 3 {
		t.Fatalf("publish after HistoryTTL = (%q, %d), want (%q, 3)", m.Epoch, m.Seq, old[0].Epoch)
	}
}

func (s *suite) storeThatCannotBeAskedFailsTheFirstUseOfARoom(t *testing.T) {
	h := &heads{err: errors.New("store down")}
	e := s.env(t, storeOptions(h))
	n := e.node()
	_, err := n.Publish(ctxFor(t), broker.Publication{Room: "lobby", From: "alice", Text: "hi", ID: "x"})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish with the store down = %v, want ErrUnavailable", err)
	}
	if _, err := n.History(ctxFor(t), "lobby", broker.HistoryQuery{}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("history with the store down = %v, want ErrUnavailable", err)
	}
	h.mu.Lock()
	h.err = nil
	h.mu.Unlock()
	if m := publish(t, n, broker.Publication{Room: "lobby", From: "alice"}); m.Seq != 1 {
		t.Fatalf("publish once the store answers = seq %d, want 1", m.Seq)
	}
}

func claim(t *testing.T, n broker.Broker, lease time.Duration) []broker.Unstored {
	t.Helper()
	got, err := n.ClaimUnstored(ctxFor(t), lease, 100)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	return got
}

func markStored(t *testing.T, n broker.Broker, u broker.Unstored) {
	t.Helper()
	if err := n.MarkStored(ctxFor(t), u); err != nil {
		t.Fatalf("mark %s stored: %v", u.Room, err)
	}
}

func (s *suite) unstoredRoomIsClaimedOnceUntilMarkedStored(t *testing.T) {
	e := s.env(t, storeOptions(&heads{}))
	a, b := e.node(), e.node()
	if got := claim(t, a, time.Minute); len(got) != 0 {
		t.Fatalf("claim before any publish = %+v, want none", got)
	}
	msgs := publishN(t, a, "lobby", 3)
	got := claim(t, b, time.Minute)
	if len(got) != 1 || got[0].Room != "lobby" || got[0].Epoch != msgs[0].Epoch || got[0].Seq != 3 || got[0].Stored != 0 {
		t.Fatalf("claim = %+v, want lobby at (%q, 3), stored 0", got, msgs[0].Epoch)
	}
	if again := claim(t, a, time.Minute); len(again) != 0 {
		t.Fatalf("second claim within the lease = %+v, want none", again)
	}
	markStored(t, b, got[0])
	if again := claim(t, a, time.Minute); len(again) != 0 {
		t.Fatalf("claim after MarkStored = %+v, want none", again)
	}
	publish(t, a, broker.Publication{Room: "lobby", From: "alice"})
	got = claim(t, a, time.Minute)
	if len(got) != 1 || got[0].Seq != 4 || got[0].Stored != 3 {
		t.Fatalf("claim after another publish = %+v, want lobby at 4, stored 3", got)
	}
}

func (s *suite) publishAfterAClaimKeepsTheRoomDue(t *testing.T) {
	e := s.env(t, storeOptions(&heads{}))
	n := e.node()
	publishN(t, n, "lobby", 1)
	u := claim(t, n, time.Minute)
	if len(u) != 1 {
		t.Fatalf("claim = %+v, want lobby", u)
	}
	publish(t, n, broker.Publication{Room: "lobby", From: "alice"})
	markStored(t, n, u[0])
	got := claim(t, n, time.Minute)
	if len(got) != 1 || got[0].Seq != 2 || got[0].Stored != 1 {
		t.Fatalf("claim after a publish during the claim = %+v, want lobby at 2, stored 1", got)
	}
}

func (s *suite) claimOfADeadCallerExpiresAfterTheLease(t *testing.T) {
	e := s.env(t, storeOptions(&heads{}))
	n := e.node()
	publishN(t, n, "lobby", 2)
	const lease = 300 * time.Millisecond
	if got := claim(t, n, lease); len(got) != 1 {
		t.Fatalf("claim = %+v, want lobby", got)
	}
	e.cluster.Advance(t, lease+200*time.Millisecond)
	if got := claim(t, n, time.Minute); len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("claim after the lease = %+v, want lobby at 2 again", got)
	}
}

func (s *suite) storeDelayHoldsARoomBack(t *testing.T) {
	opts := storeOptions(&heads{})
	opts.StoreDelay = 2 * time.Second // the claim right after the publish must come before it, even on a loaded machine
	e := s.env(t, opts)
	n := e.node()
	publishN(t, n, "lobby", 1)
	if got := claim(t, n, time.Minute); len(got) != 0 {
		t.Fatalf("claim right after the publish = %+v, want none before StoreDelay", got)
	}
	e.cluster.Advance(t, opts.StoreDelay+300*time.Millisecond)
	if got := claim(t, n, time.Minute); len(got) != 1 {
		t.Fatalf("claim after StoreDelay = %+v, want lobby", got)
	}
}

func (s *suite) withoutHeadsNothingIsUnstored(t *testing.T) {
	e := s.env(t, Options)
	n := e.node()
	publishN(t, n, "lobby", 2)
	if got := claim(t, n, time.Minute); len(got) != 0 {
		t.Fatalf("claim without a store = %+v, want none", got)
	}
}

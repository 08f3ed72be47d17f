package hub_test

import (
	"bytes"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"
)

func TestRegisterCountsConnections(t *testing.T) {
	h := newHub(t)
	register(t, h, "c1", "alice")
	register(t, h, "c2", "alice")
	eventually(t, "two connections", func() bool { return h.Stats().Connections == 2 })
}

func TestUnregisterRemovesTheClient(t *testing.T) {
	h := newHub(t)
	gone := register(t, h, "c1", "alice")
	stays := register(t, h, "c2", "alice")
	eventually(t, "two connections", func() bool { return h.Stats().Connections == 2 })
	h.Unregister(gone.Client)
	eventually(t, "the unregister", func() bool { return h.Stats().Connections == 1 })
	h.Deliver(broker.Delivery{Kind: broker.KindEvent, Topic: broker.User("alice"), Payload: []byte(`{"type":"direct"}`)})
	stays.next(t, 1)
	if got := gone.rest(t); len(got) != 0 {
		t.Fatalf("an unregistered client received %v", got)
	}
}

// A user's connections are kept with their places (O(1) removal): any of
// them can go, in any order, and a user event still reaches exactly the
// ones that stay.
func TestUnregisterInAnyOrderKeepsTheUsersOtherConnections(t *testing.T) {
	h := newHub(t)
	var conns []*probe
	for i := range 6 {
		conns = append(conns, register(t, h, fmt.Sprintf("a%d", i), "alice"))
	}
	stays := map[*probe]bool{}
	for _, c := range conns {
		stays[c] = true
	}
	// Register returns once the loop took the client, which it may count a
	// moment later: wait, so that each count below is after an unregister.
	eventually(t, "six connections", func() bool { return h.Stats().Connections == 6 })
	for _, gone := range []int{2, 5, 0} { // middle, last, first
		h.Unregister(conns[gone].Client)
		stays[conns[gone]] = false
		want := int64(len(live(stays)))
		eventually(t, "the unregister", func() bool { return h.Stats().Connections == want })
		h.Deliver(broker.Delivery{Kind: broker.KindEvent, Topic: broker.User("alice"), Payload: []byte(`{"type":"direct"}`)})
		for c, live := range stays {
			if live {
				c.next(t, 1)
			} else if got := c.rest(t); len(got) != 0 {
				t.Fatalf("unregistered %s received %v", c.ID, got)
			}
		}
	}
}

func live(stays map[*probe]bool) []*probe {
	var out []*probe
	for c, ok := range stays {
		if ok {
			out = append(out, c)
		}
	}
	return out
}

func TestUnregisterLeavesEveryRoom(t *testing.T) {
	h := newHub(t)
	c := register(t, h, "c1", "alice")
	member(t, h, c, "lobby", "e", 0)
	member(t, h, c, "other", "e", 0)
	if got := h.Stats().Rooms; got != 2 { // Join returns after the loop handled it
		t.Fatalf("rooms = %d, want 2", got)
	}
	h.Unregister(c.Client)
	eventually(t, "the rooms to empty", func() bool { return h.Stats().Rooms == 0 })
}

func TestUnregisterOfUnknownClientIsHarmless(t *testing.T) {
	h := newHub(t)
	known := register(t, h, "c1", "alice")
	h.Unregister(hub.NewClient("never", "bob", defaultQueue))
	h.Deliver(broker.Delivery{Kind: broker.KindEvent, Topic: broker.User("alice"), Payload: []byte(`{"type":"direct"}`)})
	known.next(t, 1)
	if got := h.Stats().Connections; got != 1 {
		t.Fatalf("connections = %d, want 1", got)
	}
}

func TestJoinQueuesTheReplyBeforeRoomMessages(t *testing.T) {
	h := newHub(t)
	c := register(t, h, "c1", "alice")
	member(t, h, c, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1, 2)
	got := c.next(t, 3)
	if want := []string{"reply", "message#1", "message#2"}; !reflect.DeepEqual(types(got), want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if got[0].ID != "join-lobby" {
		t.Fatalf("first event %v is not the join reply", got[0])
	}
}

func TestMessagesReachOnlyRoomMembers(t *testing.T) {
	h := newHub(t)
	lobby := register(t, h, "c1", "alice")
	other := register(t, h, "c2", "bob")
	none := register(t, h, "c3", "carol")
	member(t, h, lobby, "lobby", "e", 0)
	member(t, h, other, "other", "e", 0)
	lobby.next(t, 1)
	other.next(t, 1)
	deliver(h, "lobby", "e", 1, 2, 3)
	deliver(h, "other", "e", 1)
	deliver(h, "nobody-here", "e", 1)
	if got := types(lobby.next(t, 3)); !reflect.DeepEqual(got, []string{"message#1", "message#2", "message#3"}) {
		t.Fatalf("lobby member got %v", got)
	}
	if got := other.next(t, 1); got[0].Room != "other" {
		t.Fatalf("other member got %v", got)
	}
	newBarrier(t, h).wait(t)
	for _, c := range []*probe{lobby, other, none} {
		if got := c.rest(t); len(got) != 0 {
			t.Fatalf("client %s got events of rooms it is not in: %v", c.ID, got)
		}
	}
}

func TestMessagesAreDeliveredOnceInSeqOrder(t *testing.T) {
	h := newHub(t)
	c := register(t, h, "c1", "alice")
	member(t, h, c, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1, 2, 2, 1, 3, 3)
	newBarrier(t, h).wait(t)
	if got, want := types(c.rest(t)), []string{"reply", "message#1", "message#2", "message#3"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v (duplicates dropped)", got, want)
	}
}

func TestMemberGetsOnlyMessagesAfterItsJoinSeq(t *testing.T) {
	h := newHub(t)
	early := register(t, h, "c1", "alice")
	late := register(t, h, "c2", "bob")
	member(t, h, early, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1, 2)
	early.next(t, 3)
	// late's history read saw up to 4, while 3 and 4 are still on their
	// way to the Hub: its reply holds them, so the Hub must not send them.
	member(t, h, late, "lobby", "e", 4)
	deliver(h, "lobby", "e", 3, 4, 5)
	if got, want := types(early.next(t, 3)), []string{"message#3", "message#4", "message#5"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("early member got %v, want %v", got, want)
	}
	newBarrier(t, h).wait(t)
	if got, want := types(late.rest(t)), []string{"reply", "message#5"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("member that joined at seq 4 got %v, want %v", got, want)
	}
}

// A join whose history read is a few messages behind the Hub (every join
// into a busy room) is not refused: the Hub queues the reply, then the
// messages delivered since the read, each once and in order.
func TestJoinBehindByAFewMessagesGetsThemAfterItsReply(t *testing.T) {
	h := newHub(t)
	early := register(t, h, "c1", "alice")
	late := register(t, h, "c2", "bob")
	member(t, h, early, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1, 2, 3)
	early.next(t, 4)
	if r := join(t, h, late, "lobby", "e", 1); r.Stale || r.LastSeq != 3 { // read history before 2 and 3 were delivered
		t.Fatalf("join at seq 1 after the Hub delivered 3 = %+v, want accepted", r)
	}
	deliver(h, "lobby", "e", 4)
	if got := types(late.next(t, 4)); !reflect.DeepEqual(got, []string{"reply", "message#2", "message#3", "message#4"}) {
		t.Fatalf("late joiner got %v", got)
	}
	if got := late.rest(t); len(got) != 0 {
		t.Fatalf("late joiner got more: %v", got)
	}
}

// A join further behind than the Hub keeps is refused (Stale) and adds no
// member: the caller reads history again.
func TestStaleJoinIsRefusedAndAddsNoMember(t *testing.T) {
	h := newHub(t)
	early := register(t, h, "c1", "alice")
	late := register(t, h, "c2", "bob")
	member(t, h, early, "lobby", "e", 0)
	const delivered = 200 // more than a room keeps for joins
	for seq := int64(1); seq <= delivered; seq++ {
		deliver(h, "lobby", "e", seq)
	}
	early.next(t, 1+delivered)
	r := join(t, h, late, "lobby", "e", 1)
	if !r.Stale || r.LastSeq != delivered {
		t.Fatalf("join at seq 1 after the Hub delivered %d = %+v, want Stale with LastSeq %d", delivered, r, delivered)
	}
	deliver(h, "lobby", "e", delivered+1)
	early.next(t, 1)
	if got := late.rest(t); len(got) != 0 {
		t.Fatalf("a stale join queued %v; it must queue no reply and add no member", got)
	}
	if r := join(t, h, late, "lobby", "e", delivered+1); r.Stale || r.LastSeq != delivered+1 {
		t.Fatalf("retried join at the Hub's seq = %+v, want accepted at %d", r, delivered+1)
	}
}

// After a gap (a resync) the Hub keeps nothing from before it: a join
// behind the gap is refused.
func TestJoinBehindAResyncIsStale(t *testing.T) {
	h := newHub(t)
	early := register(t, h, "c1", "alice")
	late := register(t, h, "c2", "bob")
	member(t, h, early, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1, 2)
	h.Deliver(broker.Delivery{Kind: broker.KindResync, Topic: broker.Room("lobby"),
		Message: protocol.Message{Room: "lobby", Epoch: "e", Seq: 5}, Payload: []byte(`{"type":"resync"}`)})
	deliver(h, "lobby", "e", 6)
	early.next(t, 5)
	if r := join(t, h, late, "lobby", "e", 2); !r.Stale {
		t.Fatalf("join at 2 across a resync at 5 = %+v, want Stale", r)
	}
	if r := join(t, h, late, "lobby", "e", 5); r.Stale || r.LastSeq != 6 {
		t.Fatalf("join at 5, after the resync = %+v, want accepted", r)
	}
	if got := types(late.next(t, 2)); !reflect.DeepEqual(got, []string{"reply", "message#6"}) {
		t.Fatalf("joiner got %v", got)
	}
}

func TestJoinIsStaleAfterMessagesReachedTheRoomBeforeItsFirstMember(t *testing.T) {
	h := newHub(t)
	b := newBarrier(t, h)
	c := register(t, h, "c1", "alice")
	deliver(h, "lobby", "e", 6) // published after the join read history at 5
	b.wait(t)
	if r := join(t, h, c, "lobby", "e", 5); !r.Stale || r.LastSeq != 6 {
		t.Fatalf("join at 5 after seq 6 reached the Hub = %+v, want Stale at 6 (else seq 6 is lost)", r)
	}
	member(t, h, c, "lobby", "e", 6)
	deliver(h, "lobby", "e", 7)
	if got, want := types(c.next(t, 2)), []string{"reply", "message#7"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestJoinIsStaleAfterMessagesReachedTheRoomItsLastMemberLeft(t *testing.T) {
	h := newHub(t)
	b := newBarrier(t, h)
	first := register(t, h, "c1", "alice")
	second := register(t, h, "c2", "bob")
	member(t, h, first, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1)
	first.next(t, 2)
	if err := h.Leave(first.Client, "lobby", nil); err != nil {
		t.Fatal(err)
	}
	deliver(h, "lobby", "e", 2) // the node is still subscribed
	b.wait(t)
	if r := join(t, h, second, "lobby", "e", 1); !r.Stale || r.LastSeq != 2 {
		t.Fatalf("join at 1 after seq 2 reached the Hub = %+v, want Stale at 2", r)
	}
}

func TestLeaveQueuesItsReplyAfterRemovingMembership(t *testing.T) {
	h := newHub(t)
	leaver := register(t, h, "c1", "alice")
	stayer := register(t, h, "c2", "bob")
	member(t, h, leaver, "lobby", "e", 0)
	member(t, h, stayer, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1)
	leaver.next(t, 2)
	if err := h.Leave(leaver.Client, "lobby", reply("leave")); err != nil {
		t.Fatalf("leave: %v", err)
	}
	deliver(h, "lobby", "e", 2)
	h.Deliver(broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room("lobby"), Payload: []byte(`{"type":"typing","room":"lobby"}`)})
	stayer.next(t, 4)
	got := leaver.rest(t)
	if len(got) != 1 || got[0].ID != "leave" {
		t.Fatalf("after leave the client got %v, want only the leave reply", got)
	}
}

// Members leave from the middle and the end of a room, one rejoins, and
// every remaining member still gets each message once.
func TestMembersThatLeaveAndRejoinKeepDeliveryExact(t *testing.T) {
	h := newHub(t)
	var all []*probe
	for i := range 5 {
		c := register(t, h, "c"+strconv.Itoa(i), "user"+strconv.Itoa(i))
		member(t, h, c, "lobby", "e", 0)
		c.next(t, 1)
		all = append(all, c)
	}
	for _, gone := range []*probe{all[1], all[4]} {
		if err := h.Leave(gone.Client, "lobby", nil); err != nil {
			t.Fatal(err)
		}
	}
	member(t, h, all[1], "lobby", "e", 0) // back, at the end of the member list
	all[1].next(t, 1)
	member(t, h, all[2], "lobby", "e", 0) // joins again while a member: no second membership
	all[2].next(t, 1)
	deliver(h, "lobby", "e", 1, 2)
	newBarrier(t, h).wait(t)
	for i, c := range all {
		want := []string{"message#1", "message#2"}
		if i == 4 {
			want = nil
		}
		if got := types(c.rest(t)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("client %s got %v, want %v", c.ID, got, want)
		}
	}
}

func TestLeaveOfTheLastMemberRemovesTheRoom(t *testing.T) {
	h := newHub(t)
	c := register(t, h, "c1", "alice")
	member(t, h, c, "lobby", "e", 0)
	if got := h.Stats().Rooms; got != 1 {
		t.Fatalf("rooms = %d, want 1", got)
	}
	if err := h.Leave(c.Client, "lobby", nil); err != nil {
		t.Fatal(err)
	}
	if got := h.Stats().Rooms; got != 0 {
		t.Fatalf("rooms after the last member left = %d, want 0", got)
	}
}

func TestEventFanOut(t *testing.T) {
	payload := []byte(`{"type":"notice","text":"hi"}`)
	tests := []struct {
		name    string
		topic   broker.Topic
		exclude string
		want    []string // client ids that receive it
	}{
		{"RoomReachesMembers", broker.Room("lobby"), "", []string{"a1", "a2", "b1"}},
		{"RoomSkipsExcluded", broker.Room("lobby"), "a2", []string{"a1", "b1"}},
		{"UserReachesTheUsersClients", broker.User("alice"), "", []string{"a1", "a2", "a3"}},
		{"UserSkipsExcluded", broker.User("alice"), "a1", []string{"a2", "a3"}},
		{"UnknownUserReachesNobody", broker.User("zoe"), "", nil},
		{"RoomWithoutMembersReachesNobody", broker.Room("empty"), "", nil},
		{"BroadcastReachesEveryone", broker.BroadcastTopic, "", []string{"a1", "a2", "a3", "b1", "c1"}},
		{"BroadcastSkipsExcluded", broker.BroadcastTopic, "b1", []string{"a1", "a2", "a3", "c1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHub(t)
			clients := []*probe{
				register(t, h, "a1", "alice"), // in lobby
				register(t, h, "a2", "alice"), // in lobby
				register(t, h, "a3", "alice"), // in other
				register(t, h, "b1", "bob"),   // in lobby
				register(t, h, "c1", "carol"), // in no room
			}
			for _, c := range clients[:2] {
				member(t, h, c, "lobby", "e", 0)
			}
			member(t, h, clients[2], "other", "e", 0)
			member(t, h, clients[3], "lobby", "e", 0)
			for _, c := range clients[:4] {
				c.next(t, 1) // the join reply
			}
			b := newBarrier(t, h)
			h.Deliver(broker.Delivery{Kind: broker.KindEvent, Topic: tc.topic, Payload: payload, Exclude: tc.exclude})
			b.wait(t)
			var got []string
			for _, c := range clients {
				events := c.rest(t)
				switch {
				case len(events) == 1 && events[0].Type == "notice":
					got = append(got, c.ID)
				case len(events) != 0:
					t.Fatalf("client %s got %v", c.ID, events)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("received by %v, want %v", got, tc.want)
			}
		})
	}
}

func TestKickClosesTheUsersClientsWith4003(t *testing.T) {
	h := newHub(t)
	alice1 := register(t, h, "a1", "alice")
	alice2 := register(t, h, "a2", "alice")
	bob := register(t, h, "b1", "bob")
	h.Deliver(broker.Delivery{Kind: broker.KindKick, Topic: broker.User("alice")})
	for _, c := range []*probe{alice1, alice2} {
		if req := c.waitClosed(t); req.Code != protocol.CloseKicked {
			t.Fatalf("client %s closed with %d, want %d", c.ID, req.Code, protocol.CloseKicked)
		}
	}
	newBarrier(t, h).wait(t)
	if bob.Closing() {
		t.Fatal("kicking alice closed bob")
	}
}

func TestSlowConsumerIsClosedWith4008AndOthersStillReceive(t *testing.T) {
	h := newHub(t)
	slow := registerQueue(t, h, "slow", "alice", 1000)
	fast := register(t, h, "fast", "bob")
	member(t, h, slow, "lobby", "e", 0)
	member(t, h, fast, "lobby", "e", 0)
	const count = 100 // ~130 bytes each: the slow one passes 1000 bytes early
	for s := int64(1); s <= count; s++ {
		deliver(h, "lobby", "e", s)
	}
	got := fast.next(t, count+1)
	for i, e := range got[1:] {
		if e.Seq != int64(i+1) {
			t.Fatalf("fast client got %v at %d", e, i)
		}
	}
	req := slow.waitClosed(t)
	if req.Code != protocol.CloseSlowConsumer {
		t.Fatalf("slow client closed with %d, want %d", req.Code, protocol.CloseSlowConsumer)
	}
	if got := h.Stats().SlowConsumers; got != 1 {
		t.Fatalf("slow consumers = %d, want 1", got)
	}
}

// The Hub never blocks on a client: one that never reads is cut off, and
// the rest of the room is served at full speed meanwhile.
func TestNeverDrainedClientDoesNotDelayOthers(t *testing.T) {
	h := newHub(t)
	stuck := register(t, h, "stuck", "alice")              // never drained
	reader := registerQueue(t, h, "reader", "bob", 64<<20) // may lag behind under -race, not fall out
	member(t, h, stuck, "lobby", "e", 0)
	member(t, h, reader, "lobby", "e", 0)
	reader.next(t, 1)

	const count = 10000
	text := strings.Repeat("x", 200) // 10,000 × ~330 bytes: well over 1 MiB
	received := make(chan int64, 1)
	go func() { // the reader's write pump
		var last int64
		defer func() { received <- last }()
		deadline := time.After(timeout)
		for {
			batch, closing := reader.Drain()
			for _, raw := range batch {
				if !bytes.Contains(raw, fmt.Appendf(nil, `"seq":%d,`, last+1)) {
					return
				}
				last++
			}
			if closing != nil {
				return
			}
			if last == count {
				return
			}
			select {
			case <-reader.Wake():
			case <-deadline:
				return
			}
		}
	}()
	msgs := make([]broker.Delivery, count)
	for i := range msgs {
		m := protocol.Message{Type: "message", Room: "lobby", Epoch: "e", Seq: int64(i + 1), From: "alice", Text: text}
		msgs[i] = broker.Delivery{Kind: broker.KindMessage, Topic: broker.Room("lobby"), Message: m, Payload: protocol.MustEncode(m)}
	}
	start := time.Now()
	delivered := make(chan struct{})
	go func() { // the broker; Deliver waits only while the Hub's buffer is full
		defer close(delivered)
		for _, d := range msgs {
			h.Deliver(d)
		}
	}()
	last := <-received
	elapsed := time.Since(start)
	if last != count {
		t.Fatalf("the reader got seqs 1..%d in order, want 1..%d", last, count)
	}
	if elapsed > 4*time.Second {
		t.Fatalf("delivering %d messages took %v with a stuck client in the room", count, elapsed)
	}
	<-delivered
	if req := stuck.waitClosed(t); req.Code != protocol.CloseSlowConsumer {
		t.Fatalf("stuck client closed with %d, want %d", req.Code, protocol.CloseSlowConsumer)
	}
	if got := h.Stats().SlowConsumers; got != 1 {
		t.Fatalf("slow consumers = %d, want 1", got)
	}
}

func TestDeliveredCountsQueuedEvents(t *testing.T) {
	h := newHub(t)
	a := register(t, h, "a", "alice")
	b := register(t, h, "b", "bob")
	member(t, h, a, "lobby", "e", 0)
	member(t, h, b, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1, 2)
	a.next(t, 3)
	b.next(t, 3)
	if got := h.Stats().Delivered; got != 6 { // two replies, two messages to two members
		t.Fatalf("delivered = %d, want 6", got)
	}
}

func TestCloseAllClosesEveryClientAfterItsQueue(t *testing.T) {
	h := newHub(t)
	a := register(t, h, "a", "alice")
	b := register(t, h, "b", "bob")
	member(t, h, a, "lobby", "e", 0)
	req := hub.CloseRequest{Code: 1001, Text: "server shutting down", Flush: true}
	h.CloseAll(req)
	eventually(t, "every client closing", func() bool { return a.Closing() && b.Closing() })
	batch, got := a.Drain()
	if len(batch) != 1 || got == nil || *got != req {
		t.Fatalf("a drained %d events and %+v, want its join reply and %+v", len(batch), got, req)
	}
	if got := b.waitClosed(t); got != req {
		t.Fatalf("b closed with %+v, want %+v", got, req)
	}
}

func TestStopEndsRunAndLaterCallsDoNotBlock(t *testing.T) {
	h := hub.New(1)
	ran := make(chan struct{})
	go func() { h.Run(); close(ran) }()
	c := register(t, h, "c1", "alice")
	member(t, h, c, "lobby", "e", 0)
	h.Stop()
	select {
	case <-ran:
	case <-time.After(timeout):
		t.Fatal("Run did not return after Stop")
	}
	if h.Running() {
		t.Fatal("Running after Stop")
	}

	calls := make(chan string)
	go func() {
		if err := h.Register(hub.NewClient("c2", "bob", defaultQueue)); err != hub.ErrStopped {
			t.Errorf("register after stop: %v, want ErrStopped", err)
		}
		calls <- "register"
		if _, err := h.Join(hub.JoinRequest{Client: c.Client, Room: "other", Epoch: "e"}); err != hub.ErrStopped {
			t.Errorf("join after stop: %v, want ErrStopped", err)
		}
		calls <- "join"
		if err := h.Leave(c.Client, "lobby", nil); err != hub.ErrStopped {
			t.Errorf("leave after stop: %v, want ErrStopped", err)
		}
		calls <- "leave"
		for i := 0; i < 10; i++ { // more than the delivery buffer holds
			h.Deliver(message("lobby", "e", int64(i+1)))
		}
		calls <- "deliver"
		for i := 0; i < 100; i++ { // more than the unregister buffer holds
			h.Unregister(c.Client)
		}
		calls <- "unregister"
		h.CloseAll(hub.CloseRequest{Code: 1001})
		calls <- "close all"
		h.Stop()
		calls <- "stop again"
		close(calls)
	}()
	deadline := time.After(timeout)
	last := "stop"
	for {
		select {
		case call, ok := <-calls:
			if !ok {
				return
			}
			last = call
		case <-deadline:
			t.Fatalf("a call after %q blocked on a stopped Hub", last)
		}
	}
}

func TestEpochChangeSendsResyncToMembers(t *testing.T) {
	h := newHub(t)
	a := register(t, h, "a", "alice")
	b := register(t, h, "b", "bob")
	member(t, h, a, "lobby", "old", 0)
	member(t, h, b, "lobby", "old", 0)
	deliver(h, "lobby", "old", 1, 2)
	deliver(h, "lobby", "new", 1) // the room's history was lost and restarted
	for _, c := range []*probe{a, b} {
		got := c.next(t, 5)
		if want := []string{"reply", "message#1", "message#2", "resync", "message#1"}; !reflect.DeepEqual(types(got), want) {
			t.Fatalf("client %s got %v, want %v", c.ID, got, want)
		}
		if rs := got[3]; rs.Room != "lobby" || rs.Epoch != "new" {
			t.Fatalf("resync = %v, want room lobby, epoch new", rs)
		}
		if m := got[4]; m.Epoch != "new" {
			t.Fatalf("message after resync has epoch %q, want new", m.Epoch)
		}
	}
}

// A join whose history read predates a restart of the room's sequence must
// not silently skip the new epoch's messages up to its old seq.
func TestJoinWithAnOlderEpochIsResynced(t *testing.T) {
	h := newHub(t)
	early := register(t, h, "a", "alice")
	late := register(t, h, "b", "bob")
	member(t, h, early, "lobby", "old", 0)
	deliver(h, "lobby", "new", 1)
	early.next(t, 3) // reply, resync, message#1
	member(t, h, late, "lobby", "old", 5)
	deliver(h, "lobby", "new", 2, 3, 4, 5, 6)
	got := late.next(t, 7)
	if want := []string{"reply", "resync", "message#2", "message#3", "message#4", "message#5", "message#6"}; !reflect.DeepEqual(types(got), want) {
		t.Fatalf("late member got %v, want %v", got, want)
	}
	if got[1].Epoch != "new" {
		t.Fatalf("resync %v, want epoch new", got[1])
	}
}

// A join that read the restarted room's new epoch before any message of it
// reached the Hub is already in the new sequence: it needs no resync.
func TestJoinWithTheNewEpochIsNotResynced(t *testing.T) {
	h := newHub(t)
	early := register(t, h, "a", "alice")
	late := register(t, h, "b", "bob")
	member(t, h, early, "lobby", "old", 0)
	deliver(h, "lobby", "old", 1, 2, 3)
	early.next(t, 4)
	member(t, h, late, "lobby", "new", 0)
	deliver(h, "lobby", "new", 1, 2)
	if got, want := types(early.next(t, 3)), []string{"resync", "message#1", "message#2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("early member got %v, want %v", got, want)
	}
	if got, want := types(late.next(t, 3)), []string{"reply", "message#1", "message#2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("member that joined in the new epoch got %v, want %v", got, want)
	}
}

func TestResyncDeliveryReachesMembersAndAdvancesTheRoom(t *testing.T) {
	h := newHub(t)
	a := register(t, h, "a", "alice")
	late := register(t, h, "b", "bob")
	member(t, h, a, "lobby", "e", 0)
	deliver(h, "lobby", "e", 1)
	a.next(t, 2)
	// The node missed 2..5 and history no longer holds them.
	rs := protocol.Resync{Type: "resync", Room: "lobby", Epoch: "e", Seq: 5}
	h.Deliver(broker.Delivery{Kind: broker.KindResync, Topic: broker.Room("lobby"), Message: protocol.Message{Room: "lobby", Epoch: "e", Seq: 5}, Payload: protocol.MustEncode(rs)})
	if got := a.next(t, 1)[0]; got.Type != "resync" || got.Seq != 5 {
		t.Fatalf("member got %v, want resync at 5", got)
	}
	if r := join(t, h, late, "lobby", "e", 3); !r.Stale || r.LastSeq != 5 {
		t.Fatalf("join at 3 after a resync at 5 = %+v, want Stale at 5", r)
	}
	deliver(h, "lobby", "e", 4, 6)
	if got := a.next(t, 1)[0]; got.Seq != 6 {
		t.Fatalf("after the resync the member got %v, want message 6 (4 is behind it)", got)
	}
}

func TestJoinIsStaleAfterAResyncReachedTheRoomBeforeItsFirstMember(t *testing.T) {
	h := newHub(t)
	b := newBarrier(t, h)
	c := register(t, h, "c1", "alice")
	rs := protocol.Resync{Type: "resync", Room: "lobby", Epoch: "e", Seq: 9}
	h.Deliver(broker.Delivery{Kind: broker.KindResync, Topic: broker.Room("lobby"), Message: protocol.Message{Room: "lobby", Epoch: "e", Seq: 9}, Payload: protocol.MustEncode(rs)})
	b.wait(t)
	if r := join(t, h, c, "lobby", "e", 5); !r.Stale || r.LastSeq != 9 {
		t.Fatalf("join at 5 after a resync at 9 = %+v, want Stale at 9", r)
	}
}

func TestConcurrentCallersKeepSeqOrder(t *testing.T) {
	h := newHub(t)
	const rooms, perRoom = 8, 200
	var wg sync.WaitGroup
	clients := make([]*probe, rooms)
	for i := range clients {
		room := fmt.Sprintf("room-%d", i)
		clients[i] = register(t, h, "c-"+room, "alice")
		member(t, h, clients[i], room, "e", 0)
		wg.Add(1)
		go func() { // one broker topic per room, delivered in order
			defer wg.Done()
			for s := int64(1); s <= perRoom; s++ {
				h.Deliver(message(room, "e", s))
			}
		}()
	}
	wg.Wait()
	for _, c := range clients {
		got := c.next(t, perRoom+1)
		for i, e := range got[1:] {
			if e.Seq != int64(i+1) {
				t.Fatalf("client %s: event %d is %v", c.ID, i, e)
			}
		}
	}
}

// BenchmarkFanOut measures one room message delivered to 1,000 members.
// Every 256 messages the benchmark drains every queue, as the members'
// write pumps would.
// lobby runs a Hub with members clients in room "lobby", their join
// replies queued.
func lobby(b *testing.B, members int) (*hub.Hub, []*hub.Client) {
	b.Helper()
	h := hub.New(256)
	go h.Run()
	clients := make([]*hub.Client, members)
	for i := range clients {
		clients[i] = hub.NewClient(fmt.Sprintf("c%d", i), fmt.Sprintf("user%d", i), 1<<30)
		if err := h.Register(clients[i]); err != nil {
			b.Fatal(err)
		}
		if _, err := h.Join(hub.JoinRequest{Client: clients[i], Room: "lobby", Epoch: "e", Reply: reply("join")}); err != nil {
			b.Fatal(err)
		}
	}
	return h, clients
}

func BenchmarkFanOut(b *testing.B) {
	const members, drainEvery = 1000, 256
	h, clients := lobby(b, members)
	defer h.Stop()
	// Once the sentinel has a message, the Hub is done with every earlier
	// one; what the others got of the last is drained next time.
	sentinel := clients[members-1]
	waitFor := func(events int) {
		for got := 0; got < events; {
			batch, _ := sentinel.Drain()
			got += len(batch)
			if got < events {
				<-sentinel.Wake()
			}
		}
		for _, c := range clients[:members-1] {
			c.Drain()
		}
	}
	waitFor(1) // the join replies
	msgs := make([]broker.Delivery, b.N)
	for i := range msgs {
		msgs[i] = message("lobby", "e", int64(i+1))
	}
	b.ReportAllocs()
	b.ResetTimer()
	pending := 0
	for i := range msgs {
		h.Deliver(msgs[i])
		if pending++; pending == drainEvery {
			waitFor(pending)
			pending = 0
		}
	}
	waitFor(pending)
	b.StopTimer()
	b.ReportMetric(float64(b.N*members)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkFanOutPaced is BenchmarkFanOut for a steady stream: each message
// reaches the Hub alone (no other delivery waits), as at a few thousand
// messages per second, and every member's queue is drained after it.
func BenchmarkFanOutPaced(b *testing.B) {
	const members = 1000
	h, clients := lobby(b, members)
	defer h.Stop()
	sentinel := clients[members-1] // the last member the Hub hands a message to
	drain := func() {
		for {
			if batch, _ := sentinel.Drain(); len(batch) > 0 {
				break
			}
			<-sentinel.Wake()
		}
		for _, c := range clients[:members-1] {
			c.Drain()
		}
	}
	drain() // the join replies
	msgs := make([]broker.Delivery, b.N)
	for i := range msgs {
		msgs[i] = message("lobby", "e", int64(i+1))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range msgs {
		h.Deliver(msgs[i])
		drain()
	}
	b.ReportMetric(float64(b.N*members)/b.Elapsed().Seconds(), "events/s")
}

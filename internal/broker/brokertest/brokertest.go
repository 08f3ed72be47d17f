// Package brokertest is the conformance suite of the broker.Broker contract:
// every implementation (memory, Redis) runs the same Run, so the comment on
// broker.Broker is checked, not just written.
//
// Handlers are called from broker goroutines, so every delivery is recorded
// under a mutex and waited for with a timeout. A test that something does
// not arrive never sleeps and hopes: it sends a marker on a topic the node
// is subscribed to, waits for the marker, and then checks that nothing else
// came (deliveries reach a node in the order they were made).
package brokertest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"
)

// Cluster makes nodes that share one backbone, as replicas share one Redis.
// newCluster (the argument of Run) makes an empty backbone for each subtest
// and releases it with t.Cleanup.
type Cluster interface {
	// Node starts one node on the backbone that delivers to h, with its own
	// connection to the backbone (a Redis node has its own client). The
	// suite calls Close on every node it made before the test ends, exactly
	// once.
	Node(t *testing.T, h broker.Handler) broker.Broker

	// Advance lets at least d pass for the backbone's expiries (history,
	// idempotency keys, presence). A real backbone sleeps; a fake clock (the
	// memory backend's, miniredis's FastForward) may jump instead, as long
	// as the nodes' own timers (presence refresh) behave as they would
	// over d.
	Advance(t *testing.T, d time.Duration)
}

// Crasher is a Cluster whose nodes can die without a word, as a killed
// process does: Crash stops n without removing its presence, which must
// then expire after PresenceTTL. The suite calls Crash instead of Close, at
// most once per node. A Cluster without it (the memory backend, whose
// Close stands for a dead replica) has its nodes closed instead.
type Crasher interface {
	Crash(t *testing.T, n broker.Broker) error
}

// Options are what the suite passes to newCluster unless a subtest needs
// other values: a short PresenceTTL so that the presence tests of a real
// backbone wait about a second.
var Options = broker.Options{
	HistorySize: 10,
	HistoryTTL:  time.Minute,
	PresenceTTL: time.Second,
	KeyTTL:      time.Minute,
}

// Timeout bounds every wait for a delivery.
const Timeout = 5 * time.Second

// presenceSlack is how long after PresenceTTL a dead node's presence may
// still be listed (refresh period and clock rounding of a real backbone).
const presenceSlack = 2 * time.Second

// Run runs the suite against the implementation that newCluster builds.
func Run(t *testing.T, newCluster func(t *testing.T, opts broker.Options) Cluster) {
	s := &suite{newCluster: newCluster}
	tests := []struct {
		name string
		run  func(*testing.T)
	}{
		{"PublishNumbersSeqsFromOne", s.publishNumbersSeqsFromOne},
		{"ConcurrentPublishersGetEverySeqOnce", s.concurrentPublishersGetEverySeqOnce},
		{"EverySubscribedNodeReceivesEachMessageOnceInSeqOrder", s.everySubscribedNodeReceivesEachMessageOnceInSeqOrder},
		{"DeliveryPayloadIsTheEncodedMessageEvent", s.deliveryPayloadIsTheEncodedMessageEvent},
		{"UnsubscribedNodeReceivesNothingOfTheRoom", s.unsubscribedNodeReceivesNothingOfTheRoom},
		{"SubscribeReturnsOnceActive", s.subscribeReturnsOnceActive},
		{"SubscribeTwiceDeliversOnce", s.subscribeTwiceDeliversOnce},
		{"UnsubscribeStopsDelivery", s.unsubscribeStopsDelivery},
		{"CloseStopsDelivery", s.closeStopsDelivery},
		{"HistoryKeepsTheLastHistorySize", s.historyKeepsTheLastHistorySize},
		{"HistoryQueriesReturnOldestFirst", s.historyQueriesReturnOldestFirst},
		{"HistoryOfNewRoomStartsEpochAtSeqZero", s.historyOfNewRoomStartsEpochAtSeqZero},
		{"EpochIsStableAcrossPublishesAndNodes", s.epochIsStableAcrossPublishesAndNodes},
		{"HistoryTTLExpiryStartsNewEpoch", s.historyTTLExpiryStartsNewEpoch},
		{"RepeatedKeyReturnsFirstMessageAndPublishesNothing", s.repeatedKeyReturnsFirstMessageAndPublishesNothing},
		{"RepeatedKeyOnAnotherNodeReturnsFirstMessage", s.repeatedKeyOnAnotherNodeReturnsFirstMessage},
		{"SameKeyFromAnotherUserIsANewMessage", s.sameKeyFromAnotherUserIsANewMessage},
		{"SameKeyInAnotherRoomIsANewMessage", s.sameKeyInAnotherRoomIsANewMessage},
		{"KeyIsForgottenAfterKeyTTL", s.keyIsForgottenAfterKeyTTL},
		{"EmitToRoomReachesOnlyRoomSubscribers", s.emitToRoomReachesOnlyRoomSubscribers},
		{"EmitToUserReachesOnlyUserSubscribers", s.emitToUserReachesOnlyUserSubscribers},
		{"BroadcastReachesEveryNode", s.broadcastReachesEveryNode},
		{"KickIsDeliveredLikeAnEvent", s.kickIsDeliveredLikeAnEvent},
		{"ExcludeIsCarried", s.excludeIsCarried},
		{"EventsOfATopicArriveInEmitOrder", s.eventsOfATopicArriveInEmitOrder},
		{"MembersCountsConnectionsPerUserSortedByUser", s.membersCountsConnectionsPerUserSortedByUser},
		{"LeaveAndDisconnectRemoveMembers", s.leaveAndDisconnectRemoveMembers},
		{"RoomsListsRoomsWithSomeonePresent", s.roomsListsRoomsWithSomeonePresent},
		{"UserConnectionsCountsEveryNode", s.userConnectionsCountsEveryNode},
		{"ClosedNodePresenceDisappears", s.closedNodePresenceDisappears},
		{"LiveNodePresenceOutlastsPresenceTTL", s.liveNodePresenceOutlastsPresenceTTL},
		{"JoinAndLeaveReportTheUsersFirstAndLastConnection", s.joinAndLeaveReportTheUsersFirstAndLastConnection},
		{"RepeatedJoinChangesNothing", s.repeatedJoinChangesNothing},
		{"ConcurrentJoinsOfOneUserChangeItOnce", s.concurrentJoinsOfOneUserChangeItOnce},
		{"MembersPagesAreSortedAfterExclusiveAndCounted", s.membersPagesAreSortedAfterExclusiveAndCounted},
		{"PagingAThousandUsersSeesEachOnce", s.pagingAThousandUsersSeesEachOnce},
		{"DisconnectUpdatesCountsInEveryRoom", s.disconnectUpdatesCountsInEveryRoom},
		{"DeadNodeLeavesTheCountWithoutLeave", s.deadNodeLeavesTheCountWithoutLeave},
		{"PresenceEventReachesRoomSubscribersIntact", s.presenceEventReachesRoomSubscribersIntact},
		{"PublishWithCancelledContextFails", s.publishWithCancelledContextFails},
		{"PingAnswers", s.pingAnswers},
		{"SessionIsFoundOnEveryNodeWhileConnected", s.sessionIsFoundOnEveryNodeWhileConnected},
		{"DeadNodesSessionsExpire", s.deadNodesSessionsExpire},
		{"CommandReachesOnlyItsNodeIntact", s.commandReachesOnlyItsNodeIntact},
		{"GrantsAreSharedSortedAndDurable", s.grantsAreSharedSortedAndDurable},
		{"NodesAndUsersAreCountedClusterWide", s.nodesAndUsersAreCountedClusterWide},
		{"RoomWithoutSequenceContinuesFromTheStoresHead", s.roomWithoutSequenceContinuesFromTheStoresHead},
		{"RoomWhoseHistoryExpiredContinuesFromTheStoresHead", s.roomWhoseHistoryExpiredContinuesFromTheStoresHead},
		{"StoreThatCannotBeAskedFailsTheFirstUseOfARoom", s.storeThatCannotBeAskedFailsTheFirstUseOfARoom},
		{"UnstoredRoomIsClaimedOnceUntilMarkedStored", s.unstoredRoomIsClaimedOnceUntilMarkedStored},
		{"PublishAfterAClaimKeepsTheRoomDue", s.publishAfterAClaimKeepsTheRoomDue},
		{"ClaimOfADeadCallerExpiresAfterTheLease", s.claimOfADeadCallerExpiresAfterTheLease},
		{"StoreDelayHoldsARoomBack", s.storeDelayHoldsARoomBack},
		{"WithoutHeadsNothingIsUnstored", s.withoutHeadsNothingIsUnstored},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

type suite struct {
	newCluster func(t *testing.T, opts broker.Options) Cluster
}

// env is one subtest's backbone and the nodes made on it.
type env struct {
	t       *testing.T
	opts    broker.Options
	cluster Cluster
	markers atomic.Int64
}

func (s *suite) env(t *testing.T, opts broker.Options) *env {
	t.Helper()
	return &env{t: t, opts: opts, cluster: s.newCluster(t, opts)}
}

// node is a broker with the record of what its handler received.
type node struct {
	broker.Broker
	*recorder
	closeOnce sync.Once
	closeErr  error
}

func (e *env) node() *node {
	e.t.Helper()
	n := &node{recorder: newRecorder()}
	n.Broker = e.cluster.Node(e.t, n.handle)
	e.t.Cleanup(func() {
		if err := n.close(); err != nil {
			e.t.Errorf("close node: %v", err)
		}
	})
	return n
}

func (n *node) close() error {
	n.closeOnce.Do(func() { n.closeErr = n.Broker.Close() })
	return n.closeErr
}

// die stops n as a crash would where the cluster can crash nodes, and
// closes it where it cannot.
func (e *env) die(n *node) {
	e.t.Helper()
	crasher, ok := e.cluster.(Crasher)
	if !ok {
		if err := n.close(); err != nil {
			e.t.Fatalf("close: %v", err)
		}
		return
	}
	n.closeOnce.Do(func() { n.closeErr = crasher.Crash(e.t, n.Broker) })
	if n.closeErr != nil {
		e.t.Fatalf("crash: %v", n.closeErr)
	}
}

func (e *env) nodes(count int) []*node {
	e.t.Helper()
	nodes := make([]*node, count)
	for i := range nodes {
		nodes[i] = e.node()
	}
	return nodes
}

// recorder keeps every delivery of a node's handler.
type recorder struct {
	mu     sync.Mutex
	got    []broker.Delivery
	notify chan struct{} // capacity 1: "got changed"
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) handle(d broker.Delivery) {
	r.mu.Lock()
	r.got = append(r.got, d)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) deliveries() []broker.Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]broker.Delivery(nil), r.got...)
}

// waitUntil waits until done holds for the deliveries so far and returns them.
func (r *recorder) waitUntil(t *testing.T, what string, done func([]broker.Delivery) bool) []broker.Delivery {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for {
		got := r.deliveries()
		if done(got) {
			return got
		}
		select {
		case <-r.notify:
		case <-timer.C:
			t.Fatalf("timed out after %v waiting for %s; got %d deliveries: %s", Timeout, what, len(got), describe(got))
			return nil
		}
	}
}

// waitMessages waits for count messages of room and returns them.
func (r *recorder) waitMessages(t *testing.T, room string, count int) []protocol.Message {
	t.Helper()
	got := r.waitUntil(t, fmt.Sprintf("%d messages of %s", count, room), func(ds []broker.Delivery) bool {
		return len(messagesOf(ds, room)) >= count
	})
	return messagesOf(got, room)
}

// waitTopic waits for count deliveries on topic and returns them.
func (r *recorder) waitTopic(t *testing.T, topic broker.Topic, count int) []broker.Delivery {
	t.Helper()
	got := r.waitUntil(t, fmt.Sprintf("%d deliveries on %v", count, topic), func(ds []broker.Delivery) bool {
		return len(onTopic(ds, topic)) >= count
	})
	return onTopic(got, topic)
}

// settle makes sure n has received everything made before it was called: it
// subscribes n to a fresh marker topic, emits a marker there from via, and
// waits for it. It returns n's deliveries without the marker.
func (e *env) settle(n *node, via broker.Broker) []broker.Delivery {
	e.t.Helper()
	topic := broker.User(fmt.Sprintf("brokertest-marker-%d", e.markers.Add(1)))
	ctx := ctxFor(e.t)
	if err := n.Subscribe(ctx, topic); err != nil {
		e.t.Fatalf("subscribe marker: %v", err)
	}
	if err := via.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: topic, Payload: []byte(`{"type":"marker"}`)}); err != nil {
		e.t.Fatalf("emit marker: %v", err)
	}
	n.waitTopic(e.t, topic, 1)
	if err := n.Unsubscribe(ctx, topic); err != nil {
		e.t.Fatalf("unsubscribe marker: %v", err)
	}
	var rest []broker.Delivery
	for _, d := range n.deliveries() {
		if d.Topic != topic {
			rest = append(rest, d)
		}
	}
	return rest
}

func messagesOf(ds []broker.Delivery, room string) []protocol.Message {
	var msgs []protocol.Message
	for _, d := range ds {
		if d.Kind == broker.KindMessage && d.Topic == broker.Room(room) {
			msgs = append(msgs, d.Message)
		}
	}
	return msgs
}

func onTopic(ds []broker.Delivery, topic broker.Topic) []broker.Delivery {
	var out []broker.Delivery
	for _, d := range ds {
		if d.Topic == topic {
			out = append(out, d)
		}
	}
	return out
}

func describe(ds []broker.Delivery) string {
	const most = 20
	s := ""
	for i, d := range ds {
		if i == most {
			s += fmt.Sprintf(" ... (%d more)", len(ds)-most)
			break
		}
		s += fmt.Sprintf(" {kind %d topic %v seq %d payload %.60s}", d.Kind, d.Topic, d.Message.Seq, d.Payload)
	}
	return s
}

func seqs(msgs []protocol.Message) []int64 {
	out := make([]int64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Seq
	}
	return out
}

func seqRange(from, to int64) []int64 {
	var out []int64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

func subscribe(t *testing.T, n broker.Broker, topics ...broker.Topic) {
	t.Helper()
	for _, topic := range topics {
		if err := n.Subscribe(ctxFor(t), topic); err != nil {
			t.Fatalf("subscribe %v: %v", topic, err)
		}
	}
}

func publish(t *testing.T, n broker.Broker, p broker.Publication) protocol.Message {
	t.Helper()
	if p.ID == "" {
		p.ID = fmt.Sprintf("id-%s-%s-%d", p.Room, p.From, time.Now().UnixNano())
	}
	if p.Text == "" {
		p.Text = "hello"
	}
	m, err := n.Publish(ctxFor(t), p)
	if err != nil {
		t.Fatalf("publish to %s: %v", p.Room, err)
	}
	return m
}

// publishN publishes count messages to room from alice and returns them.
func publishN(t *testing.T, n broker.Broker, room string, count int) []protocol.Message {
	t.Helper()
	msgs := make([]protocol.Message, count)
	for i := range msgs {
		msgs[i] = publish(t, n, broker.Publication{Room: room, From: "alice", Text: fmt.Sprintf("m%d", i+1), ID: fmt.Sprintf("%s-%d", room, i+1)})
	}
	return msgs
}

func history(t *testing.T, n broker.Broker, room string, q broker.HistoryQuery) broker.History {
	t.Helper()
	h, err := n.History(ctxFor(t), room, q)
	if err != nil {
		t.Fatalf("history of %s %+v: %v", room, q, err)
	}
	return h
}

func emit(t *testing.T, n broker.Broker, d broker.Delivery) {
	t.Helper()
	if err := n.Emit(ctxFor(t), d); err != nil {
		t.Fatalf("emit to %v: %v", d.Topic, err)
	}
}

func (s *suite) publishNumbersSeqsFromOne(t *testing.T) {
	e := s.env(t, Options)
	n := e.node()
	before := time.Now()
	var epoch string
	for i := int64(1); i <= 3; i++ {
		p := broker.Publication{Room: "lobby", From: "alice", Text: fmt.Sprintf("text %d", i), ID: fmt.Sprintf("id-%d", i)}
		m := publish(t, n, p)
		want := protocol.Message{Type: "message", Room: p.Room, Epoch: m.Epoch, Seq: i, ID: p.ID, From: p.From, Text: p.Text, TS: m.TS}
		if m != want {
			t.Fatalf("publish %d = %+v, want %+v", i, m, want)
		}
		if m.Epoch == "" {
			t.Fatalf("publish %d has no epoch", i)
		}
		if epoch != "" && m.Epoch != epoch {
			t.Fatalf("publish %d epoch %q, earlier %q", i, m.Epoch, epoch)
		}
		epoch = m.Epoch
		if ts := time.UnixMilli(m.TS); ts.Before(before.Add(-time.Minute)) || ts.After(time.Now().Add(time.Minute)) {
			t.Fatalf("publish %d ts %v is not about now (%v)", i, ts, before)
		}
	}
}

// publishConcurrently publishes perWorker messages from workers goroutines
// on each publisher node and returns the seqs they were given.
func publishConcurrently(t *testing.T, publishers []*node, room string, workers, perWorker int) []int64 {
	t.Helper()
	var (
		mu   sync.Mutex
		got  []int64
		errs = make(chan error, len(publishers)*workers)
		wg   sync.WaitGroup
	)
	for p, n := range publishers {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perWorker; i++ {
					m, err := n.Publish(context.Background(), broker.Publication{
						Room: room, From: fmt.Sprintf("user-%d-%d", p, w), Text: "x",
						ID: fmt.Sprintf("id-%d-%d-%d", p, w, i),
					})
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					got = append(got, m.Seq)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent publish: %v", err)
	}
	return got
}

func (s *suite) concurrentPublishersGetEverySeqOnce(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(3)
	const workers, perWorker = 4, 25
	got := publishConcurrently(t, nodes, "busy", workers, perWorker)
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	total := int64(len(nodes) * workers * perWorker)
	if want := seqRange(1, total); !reflect.DeepEqual(got, want) {
		t.Fatalf("seqs given to publishers = %v, want 1..%d each once", got, total)
	}
	if h := history(t, nodes[0], "busy", broker.HistoryQuery{}); h.Seq != total {
		t.Fatalf("head seq = %d, want %d", h.Seq, total)
	}
}

func (s *suite) everySubscribedNodeReceivesEachMessageOnceInSeqOrder(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(3)
	for _, n := range nodes {
		subscribe(t, n, broker.Room("busy"))
	}
	const workers, perWorker = 4, 25
	publishConcurrently(t, nodes, "busy", workers, perWorker)
	total := len(nodes) * workers * perWorker
	want := seqRange(1, int64(total))
	for i, n := range nodes {
		n.waitMessages(t, "busy", total)
		msgs := messagesOf(e.settle(n, nodes[0]), "busy")
		if got := seqs(msgs); !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d received seqs %v, want 1..%d in order, each once", i, got, total)
		}
		for _, m := range msgs {
			if m.Epoch != msgs[0].Epoch {
				t.Fatalf("node %d: seq %d has epoch %q, seq 1 had %q", i, m.Seq, m.Epoch, msgs[0].Epoch)
			}
		}
	}
}

func (s *suite) deliveryPayloadIsTheEncodedMessageEvent(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	subscribe(t, sub, broker.Room("lobby"))
	sent := publish(t, pub, broker.Publication{Room: "lobby", From: "alice", Text: "<b>\"hi\"</b>\nthere", ID: "m1"})
	d := sub.waitTopic(t, broker.Room("lobby"), 1)[0]
	if d.Kind != broker.KindMessage {
		t.Fatalf("kind = %d, want KindMessage", d.Kind)
	}
	if d.Message != sent {
		t.Fatalf("delivered message %+v, published %+v", d.Message, sent)
	}
	var decoded protocol.Message
	if err := json.Unmarshal(d.Payload, &decoded); err != nil {
		t.Fatalf("payload %q is not JSON: %v", d.Payload, err)
	}
	if decoded != sent {
		t.Fatalf("payload decodes to %+v, want %+v", decoded, sent)
	}
	var fields map[string]any
	if err := json.Unmarshal(d.Payload, &fields); err != nil {
		t.Fatal(err)
	}
	if fields["type"] != "message" {
		t.Fatalf(`payload %s has type %v, want "message"`, d.Payload, fields["type"])
	}
}

func (s *suite) unsubscribedNodeReceivesNothingOfTheRoom(t *testing.T) {
	e := s.env(t, Options)
	pub, other := e.node(), e.node()
	subscribe(t, pub, broker.Room("lobby"))
	subscribe(t, other, broker.Room("elsewhere"))
	publishN(t, pub, "lobby", 3)
	pub.waitMessages(t, "lobby", 3)
	if got := e.settle(other, pub); len(got) != 0 {
		t.Fatalf("a node not subscribed to lobby received:%s", describe(got))
	}
}

func (s *suite) subscribeReturnsOnceActive(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	const rooms = 20
	for i := 0; i < rooms; i++ {
		room := fmt.Sprintf("room-%d", i)
		subscribe(t, sub, broker.Room(room))
		publish(t, pub, broker.Publication{Room: room, From: "alice"})
	}
	for i := 0; i < rooms; i++ {
		sub.waitMessages(t, fmt.Sprintf("room-%d", i), 1)
	}
}

func (s *suite) subscribeTwiceDeliversOnce(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	subscribe(t, sub, broker.Room("lobby"), broker.Room("lobby"))
	publishN(t, pub, "lobby", 2)
	sub.waitMessages(t, "lobby", 2)
	if got := seqs(messagesOf(e.settle(sub, pub), "lobby")); !reflect.DeepEqual(got, []int64{1, 2}) {
		t.Fatalf("subscribed twice, received seqs %v, want [1 2]", got)
	}
}

func (s *suite) unsubscribeStopsDelivery(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	subscribe(t, sub, broker.Room("lobby"))
	publish(t, pub, broker.Publication{Room: "lobby", From: "alice"})
	sub.waitMessages(t, "lobby", 1)
	if err := sub.Unsubscribe(ctxFor(t), broker.Room("lobby")); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	publishN(t, pub, "lobby", 2)
	if got := seqs(messagesOf(e.settle(sub, pub), "lobby")); !reflect.DeepEqual(got, []int64{1}) {
		t.Fatalf("after unsubscribe received seqs %v, want only [1]", got)
	}
}

func (s *suite) closeStopsDelivery(t *testing.T) {
	e := s.env(t, Options)
	pub, closed, witness := e.node(), e.node(), e.node()
	subscribe(t, closed, broker.Room("lobby"))
	subscribe(t, witness, broker.Room("lobby"))
	publish(t, pub, broker.Publication{Room: "lobby", From: "alice"})
	closed.waitMessages(t, "lobby", 1)
	if err := closed.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	publishN(t, pub, "lobby", 2)
	emit(t, pub, broker.Delivery{Kind: broker.KindEvent, Topic: broker.BroadcastTopic, Payload: []byte(`{"type":"notice"}`)})
	witness.waitMessages(t, "lobby", 3)
	e.settle(witness, pub) // the broadcast too
	if got := closed.deliveries(); len(got) != 1 {
		t.Fatalf("a closed node received more than its one message:%s", describe(got))
	}
}

func (s *suite) historyKeepsTheLastHistorySize(t *testing.T) {
	opts := Options
	opts.HistorySize = 5
	e := s.env(t, opts)
	n := e.node()
	sent := publishN(t, n, "lobby", 12)
	h := history(t, n, "lobby", broker.HistoryQuery{})
	if h.Seq != 12 {
		t.Fatalf("head seq = %d, want 12", h.Seq)
	}
	if !reflect.DeepEqual(h.Messages, sent[7:]) {
		t.Fatalf("history = seqs %v, want the last 5 (8..12) as published", seqs(h.Messages))
	}
}

func (s *suite) historyQueriesReturnOldestFirst(t *testing.T) {
	e := s.env(t, Options) // HistorySize 10: seqs 6..15 are kept
	n, other := e.node(), e.node()
	sent := publishN(t, n, "lobby", 15)
	bySeq := func(from, to int64) []protocol.Message { return sent[from-1 : to] }
	tests := []struct {
		name string
		q    broker.HistoryQuery
		want []protocol.Message
	}{
		{"All", broker.HistoryQuery{}, bySeq(6, 15)},
		{"After", broker.HistoryQuery{After: 12}, bySeq(13, 15)},
		{"AfterHead", broker.HistoryQuery{After: 15}, nil},
		{"AfterBeforeKept", broker.HistoryQuery{After: 2}, bySeq(6, 15)},
		{"Before", broker.HistoryQuery{Before: 9}, bySeq(6, 8)},
		{"BeforeOldestKept", broker.HistoryQuery{Before: 6}, nil},
		{"Limit", broker.HistoryQuery{Limit: 3}, bySeq(13, 15)},
		{"LimitAboveKept", broker.HistoryQuery{Limit: 50}, bySeq(6, 15)},
		{"BeforeAndLimitAreTheNewestBefore", broker.HistoryQuery{Before: 12, Limit: 2}, bySeq(10, 11)},
		{"AfterAndBefore", broker.HistoryQuery{After: 7, Before: 10}, bySeq(8, 9)},
		{"AfterAndLimitAreTheNewestAfter", broker.HistoryQuery{After: 10, Limit: 2}, bySeq(14, 15)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i, reader := range []*node{n, other} {
				h := history(t, reader, "lobby", tc.q)
				if h.Seq != 15 || h.Epoch != sent[0].Epoch {
					t.Fatalf("node %d: head (%q, %d), want (%q, 15)", i, h.Epoch, h.Seq, sent[0].Epoch)
				}
				if len(h.Messages) != len(tc.want) || (len(tc.want) > 0 && !reflect.DeepEqual(h.Messages, tc.want)) {
					t.Fatalf("node %d: history %+v = seqs %v, want %v", i, tc.q, seqs(h.Messages), seqs(tc.want))
				}
			}
		})
	}
}

func (s *suite) historyOfNewRoomStartsEpochAtSeqZero(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	h := history(t, a, "fresh", broker.HistoryQuery{})
	if h.Epoch == "" || h.Seq != 0 || len(h.Messages) != 0 {
		t.Fatalf("history of a new room = %+v, want an epoch, seq 0, no messages", h)
	}
	if again := history(t, b, "fresh", broker.HistoryQuery{}); again.Epoch != h.Epoch || again.Seq != 0 {
		t.Fatalf("second read (other node) = (%q, %d), want (%q, 0)", again.Epoch, again.Seq, h.Epoch)
	}
	if m := publish(t, b, broker.Publication{Room: "fresh", From: "alice"}); m.Epoch != h.Epoch || m.Seq != 1 {
		t.Fatalf("first message (%q, %d), want (%q, 1): the epoch History started", m.Epoch, m.Seq, h.Epoch)
	}
}

func (s *suite) epochIsStableAcrossPublishesAndNodes(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(2)
	var msgs []protocol.Message
	for i := 0; i < 6; i++ {
		msgs = append(msgs, publish(t, nodes[i%2], broker.Publication{Room: "lobby", From: "alice"}))
	}
	for _, m := range msgs {
		if m.Epoch != msgs[0].Epoch {
			t.Fatalf("seq %d has epoch %q, seq 1 had %q", m.Seq, m.Epoch, msgs[0].Epoch)
		}
	}
	for i, n := range nodes {
		if h := history(t, n, "lobby", broker.HistoryQuery{}); h.Epoch != msgs[0].Epoch || h.Seq != 6 {
			t.Fatalf("node %d history head (%q, %d), want (%q, 6)", i, h.Epoch, h.Seq, msgs[0].Epoch)
		}
	}
	if other := publish(t, nodes[0], broker.Publication{Room: "other", From: "alice"}); other.Epoch == msgs[0].Epoch {
		t.Fatalf("two rooms share the epoch %q; epochs are random per sequence", other.Epoch)
	}
}

func (s *suite) historyTTLExpiryStartsNewEpoch(t *testing.T) {
	opts := Options
	opts.HistoryTTL = 200 * time.Millisecond
	e := s.env(t, opts)
	n := e.node()
	old := publishN(t, n, "lobby", 2)
	e.cluster.Advance(t, opts.HistoryTTL+300*time.Millisecond)
	h := history(t, n, "lobby", broker.HistoryQuery{})
	if h.Epoch == "" || h.Epoch == old[0].Epoch || h.Seq != 0 || len(h.Messages) != 0 {
		t.Fatalf("after HistoryTTL history = (%q, seq %d, %d messages), want a new epoch (not %q), seq 0, none",
			h.Epoch, h.Seq, len(h.Messages), old[0].Epoch)
	}
	if m := publish(t, n, broker.Publication{Room: "lobby", From: "alice"}); m.Epoch != h.Epoch || m.Seq != 1 {
		t.Fatalf("first message after expiry (%q, %d), want (%q, 1)", m.Epoch, m.Seq, h.Epoch)
	}
}

func (s *suite) repeatedKeyReturnsFirstMessageAndPublishesNothing(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	subscribe(t, sub, broker.Room("lobby"))
	first := publish(t, pub, broker.Publication{Room: "lobby", From: "alice", Text: "first", Key: "k1", ID: "id-1"})
	again := publish(t, pub, broker.Publication{Room: "lobby", From: "alice", Text: "retry", Key: "k1", ID: "id-2"})
	if again != first {
		t.Fatalf("repeated key returned %+v, want the first message %+v", again, first)
	}
	next := publish(t, pub, broker.Publication{Room: "lobby", From: "alice", Text: "next", ID: "id-3"})
	if next.Seq != 2 {
		t.Fatalf("message after a repeated key has seq %d, want 2 (the repeat took no seq)", next.Seq)
	}
	sub.waitMessages(t, "lobby", 2)
	if got := messagesOf(e.settle(sub, pub), "lobby"); !reflect.DeepEqual(got, []protocol.Message{first, next}) {
		t.Fatalf("subscriber received seqs %v, want [1 2] (the repeat published nothing)", seqs(got))
	}
	if h := history(t, pub, "lobby", broker.HistoryQuery{}); !reflect.DeepEqual(h.Messages, []protocol.Message{first, next}) {
		t.Fatalf("history = seqs %v, want [1 2]", seqs(h.Messages))
	}
}

func (s *suite) repeatedKeyOnAnotherNodeReturnsFirstMessage(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	first := publish(t, a, broker.Publication{Room: "lobby", From: "alice", Key: "k1"})
	if again := publish(t, b, broker.Publication{Room: "lobby", From: "alice", Key: "k1"}); again != first {
		t.Fatalf("repeat through another node returned %+v, want %+v", again, first)
	}
}

func (s *suite) sameKeyFromAnotherUserIsANewMessage(t *testing.T) {
	e := s.env(t, Options)
	n := e.node()
	a := publish(t, n, broker.Publication{Room: "lobby", From: "alice", Key: "k1"})
	b := publish(t, n, broker.Publication{Room: "lobby", From: "bob", Key: "k1"})
	if a.Seq != 1 || b.Seq != 2 || b.From != "bob" {
		t.Fatalf("same key from alice then bob gave seqs %d, %d (from %q), want 1, 2 (bob)", a.Seq, b.Seq, b.From)
	}
}

func (s *suite) sameKeyInAnotherRoomIsANewMessage(t *testing.T) {
	e := s.env(t, Options)
	n := e.node()
	a := publish(t, n, broker.Publication{Room: "lobby", From: "alice", Key: "k1"})
	b := publish(t, n, broker.Publication{Room: "other", From: "alice", Key: "k1"})
	if b.Room != "other" || b.Seq != 1 || b.ID == a.ID {
		t.Fatalf("same key in another room returned %+v, want a new message of room other", b)
	}
}

func (s *suite) keyIsForgottenAfterKeyTTL(t *testing.T) {
	opts := Options
	opts.KeyTTL = 200 * time.Millisecond
	e := s.env(t, opts)
	n := e.node()
	first := publish(t, n, broker.Publication{Room: "lobby", From: "alice", Key: "k1"})
	e.cluster.Advance(t, opts.KeyTTL+300*time.Millisecond)
	later := publish(t, n, broker.Publication{Room: "lobby", From: "alice", Key: "k1"})
	if later.Seq != 2 || later.Epoch != first.Epoch {
		t.Fatalf("key reused after KeyTTL gave (%q, %d), want a new message (%q, 2)", later.Epoch, later.Seq, first.Epoch)
	}
}

// emitReachesOnly emits to topic and checks that exactly the nodes in want
// (of all) receive it once, unchanged.
func (e *env) emitReachesOnly(topic broker.Topic, all []*node, want map[*node]bool) {
	t := e.t
	t.Helper()
	sent := broker.Delivery{Kind: broker.KindEvent, Topic: topic, Payload: []byte(`{"type":"notice","text":"hi"}`)}
	emit(t, all[0], sent)
	for i, n := range all {
		if want[n] {
			n.waitTopic(t, topic, 1)
		}
		got := e.settle(n, all[0])
		switch {
		case want[n] && (len(got) != 1 || !reflect.DeepEqual(got[0], sent)):
			t.Fatalf("node %d received%s, want exactly %+v", i, describe(got), sent)
		case !want[n] && len(got) != 0:
			t.Fatalf("node %d is not subscribed to %v but received%s", i, topic, describe(got))
		}
	}
}

func (s *suite) emitToRoomReachesOnlyRoomSubscribers(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(4)
	subscribe(t, nodes[1], broker.Room("lobby"))
	subscribe(t, nodes[2], broker.Room("lobby"))
	subscribe(t, nodes[3], broker.Room("other"), broker.User("lobby")) // same name, other kind
	e.emitReachesOnly(broker.Room("lobby"), nodes, map[*node]bool{nodes[1]: true, nodes[2]: true})
}

func (s *suite) emitToUserReachesOnlyUserSubscribers(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(4)
	subscribe(t, nodes[1], broker.User("alice"))
	subscribe(t, nodes[2], broker.User("alice"))
	subscribe(t, nodes[3], broker.User("bob"), broker.Room("alice")) // same name, other kind
	e.emitReachesOnly(broker.User("alice"), nodes, map[*node]bool{nodes[1]: true, nodes[2]: true})
}

func (s *suite) broadcastReachesEveryNode(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(3)
	subscribe(t, nodes[1], broker.Room("lobby"))
	e.emitReachesOnly(broker.BroadcastTopic, nodes, map[*node]bool{nodes[0]: true, nodes[1]: true, nodes[2]: true})
}

func (s *suite) kickIsDeliveredLikeAnEvent(t *testing.T) {
	e := s.env(t, Options)
	a, b, c := e.node(), e.node(), e.node()
	subscribe(t, b, broker.User("alice"))
	subscribe(t, c, broker.User("bob"))
	kick := broker.Delivery{Kind: broker.KindKick, Topic: broker.User("alice")}
	emit(t, a, kick)
	got := b.waitTopic(t, broker.User("alice"), 1)
	if got[0].Kind != broker.KindKick || got[0].Topic != kick.Topic {
		t.Fatalf("kick arrived as %+v, want %+v", got[0], kick)
	}
	if other := e.settle(c, a); len(other) != 0 {
		t.Fatalf("a node without alice received%s", describe(other))
	}
}

func (s *suite) excludeIsCarried(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	subscribe(t, sub, broker.Room("lobby"))
	sent := broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room("lobby"), Payload: []byte(`{"type":"typing"}`), Exclude: "client-7"}
	emit(t, pub, sent)
	if got := sub.waitTopic(t, broker.Room("lobby"), 1)[0]; got.Exclude != "client-7" || string(got.Payload) != string(sent.Payload) {
		t.Fatalf("received %+v, want Exclude %q and payload %s", got, sent.Exclude, sent.Payload)
	}
}

func (s *suite) eventsOfATopicArriveInEmitOrder(t *testing.T) {
	e := s.env(t, Options)
	pub, sub := e.node(), e.node()
	subscribe(t, sub, broker.User("alice"))
	const count = 50
	for i := 0; i < count; i++ {
		emit(t, pub, broker.Delivery{Kind: broker.KindEvent, Topic: broker.User("alice"), Payload: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	got := sub.waitTopic(t, broker.User("alice"), count)
	for i, d := range got {
		if want := fmt.Sprintf(`{"n":%d}`, i); string(d.Payload) != want {
			t.Fatalf("event %d is %s, want %s (emit order)", i, d.Payload, want)
		}
	}
}

func conn(client, user string) broker.Conn { return broker.Conn{Client: client, User: user} }

// present records c as connected through n, on n's node.
func present(t *testing.T, n broker.Broker, nodeID string, c broker.Conn, rooms ...string) broker.Conn {
	t.Helper()
	c.Node = nodeID
	if err := n.Connect(ctxFor(t), c); err != nil {
		t.Fatalf("connect %+v: %v", c, err)
	}
	for _, room := range rooms {
		if _, err := n.Join(ctxFor(t), room, c); err != nil {
			t.Fatalf("join %s %+v: %v", room, c, err)
		}
	}
	return c
}

func members(t *testing.T, n broker.Broker, room string) []protocol.Member {
	t.Helper()
	got, err := n.Members(ctxFor(t), room, broker.MembersQuery{})
	if err != nil {
		t.Fatalf("members of %s: %v", room, err)
	}
	if got.Count != len(got.Members) {
		t.Fatalf("members of %s: count %d for a whole list of %d", room, got.Count, len(got.Members))
	}
	return got.Members
}

func sameMembers(got, want []protocol.Member) bool {
	return len(got) == len(want) && (len(want) == 0 || reflect.DeepEqual(got, want))
}

func rooms(t *testing.T, n broker.Broker) []broker.RoomInfo {
	t.Helper()
	got, err := n.Rooms(ctxFor(t))
	if err != nil {
		t.Fatalf("rooms: %v", err)
	}
	got = append([]broker.RoomInfo(nil), got...)
	sort.Slice(got, func(i, j int) bool { return got[i].Room < got[j].Room })
	return got
}

func userConnections(t *testing.T, n broker.Broker, user string) int {
	t.Helper()
	got, err := n.UserConnections(ctxFor(t), user)
	if err != nil {
		t.Fatalf("connections of %s: %v", user, err)
	}
	return got
}

func (s *suite) membersCountsConnectionsPerUserSortedByUser(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	present(t, a, "node-a", conn("c1", "carol"), "lobby")
	present(t, a, "node-a", conn("c2", "alice"), "lobby")
	present(t, b, "node-b", conn("c3", "alice"), "lobby")
	present(t, b, "node-b", conn("c4", "bob"), "lobby", "other")
	present(t, b, "node-b", conn("c5", "dave")) // connected, in no room
	want := []protocol.Member{{User: "alice", Connections: 2}, {User: "bob", Connections: 1}, {User: "carol", Connections: 1}}
	for i, n := range []*node{a, b} {
		if got := members(t, n, "lobby"); !sameMembers(got, want) {
			t.Fatalf("node %d: members of lobby = %+v, want %+v", i, got, want)
		}
	}
	if got := members(t, a, "empty"); len(got) != 0 {
		t.Fatalf("members of a room nobody joined = %+v, want none", got)
	}
}

func (s *suite) leaveAndDisconnectRemoveMembers(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	alice1 := present(t, a, "node-a", conn("c1", "alice"), "lobby")
	alice2 := present(t, b, "node-b", conn("c2", "alice"), "lobby")
	bob := present(t, b, "node-b", conn("c3", "bob"), "lobby", "other")
	ctx := ctxFor(t)
	if _, err := b.Leave(ctx, "lobby", alice2); err != nil {
		t.Fatal(err)
	}
	if got, want := members(t, a, "lobby"), []protocol.Member{{User: "alice", Connections: 1}, {User: "bob", Connections: 1}}; !sameMembers(got, want) {
		t.Fatalf("after alice's second connection left: members = %+v, want %+v", got, want)
	}
	if err := b.Disconnect(ctx, bob); err != nil {
		t.Fatal(err)
	}
	if got, want := members(t, a, "lobby"), []protocol.Member{{User: "alice", Connections: 1}}; !sameMembers(got, want) {
		t.Fatalf("after bob disconnected: members = %+v, want %+v", got, want)
	}
	if got := members(t, b, "other"); len(got) != 0 {
		t.Fatalf("a disconnect leaves every room; members of other = %+v", got)
	}
	if _, err := a.Leave(ctx, "lobby", alice1); err != nil {
		t.Fatal(err)
	}
	if got := members(t, b, "lobby"); len(got) != 0 {
		t.Fatalf("after everyone left: members = %+v, want none", got)
	}
}

func (s *suite) roomsListsRoomsWithSomeonePresent(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	publishN(t, a, "lobby", 3)
	publishN(t, a, "quiet", 2) // history, nobody present
	present(t, a, "node-a", conn("c1", "alice"), "lobby")
	present(t, b, "node-b", conn("c2", "alice"), "lobby")
	present(t, b, "node-b", conn("c3", "bob"), "lobby", "other")
	left := present(t, b, "node-b", conn("c4", "carol"), "gone")
	if _, err := b.Leave(ctxFor(t), "gone", left); err != nil {
		t.Fatal(err)
	}
	want := []broker.RoomInfo{{Room: "lobby", Members: 2, Seq: 3}, {Room: "other", Members: 1, Seq: 0}}
	for i, n := range []*node{a, b} {
		if got := rooms(t, n); !reflect.DeepEqual(got, want) {
			t.Fatalf("node %d: rooms = %+v, want %+v", i, got, want)
		}
	}
}

func (s *suite) userConnectionsCountsEveryNode(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	alice1 := present(t, a, "node-a", conn("c1", "alice"), "lobby")
	present(t, b, "node-b", conn("c2", "alice"))
	present(t, b, "node-b", conn("c3", "bob"))
	for i, n := range []*node{a, b} {
		if got := userConnections(t, n, "alice"); got != 2 {
			t.Fatalf("node %d: alice has %d connections, want 2", i, got)
		}
	}
	if got := userConnections(t, a, "nobody"); got != 0 {
		t.Fatalf("an unknown user has %d connections, want 0", got)
	}
	if err := a.Disconnect(ctxFor(t), alice1); err != nil {
		t.Fatal(err)
	}
	if got := userConnections(t, b, "alice"); got != 1 {
		t.Fatalf("after a disconnect alice has %d connections, want 1", got)
	}
}

// eventually checks cond, letting backbone time pass between checks, until
// it holds or more than limit passed.
func (e *env) eventually(limit time.Duration, what string, cond func() bool) {
	e.t.Helper()
	const step = 100 * time.Millisecond
	for waited := time.Duration(0); !cond(); waited += step {
		if waited > limit {
			e.t.Fatalf("%s did not happen within %v", what, limit)
		}
		e.cluster.Advance(e.t, step)
	}
}

func (s *suite) closedNodePresenceDisappears(t *testing.T) {
	e := s.env(t, Options)
	dying, live := e.node(), e.node()
	present(t, dying, "node-dying", conn("c1", "alice"), "lobby", "alone")
	present(t, dying, "node-dying", conn("c2", "bob"), "lobby")
	present(t, live, "node-live", conn("c3", "bob"), "lobby")
	if err := dying.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	want := []protocol.Member{{User: "bob", Connections: 1}}
	e.eventually(e.opts.PresenceTTL+presenceSlack, "the closed node's presence expiring", func() bool {
		return sameMembers(members(t, live, "lobby"), want) &&
			userConnections(t, live, "alice") == 0 &&
			reflect.DeepEqual(rooms(t, live), []broker.RoomInfo{{Room: "lobby", Members: 1}})
	})
}

func (s *suite) liveNodePresenceOutlastsPresenceTTL(t *testing.T) {
	e := s.env(t, Options)
	a := e.node()
	present(t, a, "node-a", conn("c1", "alice"), "lobby")
	e.cluster.Advance(t, 2*e.opts.PresenceTTL+500*time.Millisecond)
	if got, want := members(t, a, "lobby"), []protocol.Member{{User: "alice", Connections: 1}}; !sameMembers(got, want) {
		t.Fatalf("a live node's presence after 2×PresenceTTL: members = %+v, want %+v", got, want)
	}
	if got := userConnections(t, a, "alice"); got != 1 {
		t.Fatalf("a live node's connection expired: alice has %d connections", got)
	}
}

// at is c on node nodeID.
func at(nodeID string, c broker.Conn) broker.Conn {
	c.Node = nodeID
	return c
}

func join(t *testing.T, n broker.Broker, room string, c broker.Conn) broker.RoomPresence {
	t.Helper()
	p, err := n.Join(ctxFor(t), room, c)
	if err != nil {
		t.Fatalf("join %s %+v: %v", room, c, err)
	}
	return p
}

func leave(t *testing.T, n broker.Broker, room string, c broker.Conn) broker.RoomPresence {
	t.Helper()
	p, err := n.Leave(ctxFor(t), room, c)
	if err != nil {
		t.Fatalf("leave %s %+v: %v", room, c, err)
	}
	return p
}

func membersPage(t *testing.T, n broker.Broker, room string, q broker.MembersQuery) broker.MembersPage {
	t.Helper()
	page, err := n.Members(ctxFor(t), room, q)
	if err != nil {
		t.Fatalf("members of %s %+v: %v", room, q, err)
	}
	return page
}

func (s *suite) joinAndLeaveReportTheUsersFirstAndLastConnection(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	alice1, alice2 := at("node-a", conn("c1", "alice")), at("node-b", conn("c2", "alice"))
	bob, carol := at("node-b", conn("c3", "bob")), at("node-a", conn("c4", "carol"))
	steps := []struct {
		what  string
		do    func() broker.RoomPresence
		count int
		first bool // Changed
	}{
		{"alice's first connection joins", func() broker.RoomPresence { return join(t, a, "lobby", alice1) }, 1, true},
		{"alice's second joins on another node", func() broker.RoomPresence { return join(t, b, "lobby", alice2) }, 1, false},
		{"bob joins", func() broker.RoomPresence { return join(t, b, "lobby", bob) }, 2, true},
		{"carol joins another room", func() broker.RoomPresence { return join(t, a, "other", carol) }, 1, true},
		{"alice's first connection leaves", func() broker.RoomPresence { return leave(t, a, "lobby", alice1) }, 2, false},
		{"it leaves again", func() broker.RoomPresence { return leave(t, a, "lobby", alice1) }, 2, false},
		{"a connection that never joined leaves", func() broker.RoomPresence { return leave(t, b, "lobby", carol) }, 2, false},
		{"alice's last connection leaves", func() broker.RoomPresence { return leave(t, b, "lobby", alice2) }, 1, true},
		{"bob leaves", func() broker.RoomPresence { return leave(t, b, "lobby", bob) }, 0, true},
		{"bob leaves the empty room again", func() broker.RoomPresence { return leave(t, b, "lobby", bob) }, 0, false},
	}
	for _, step := range steps {
		if got, want := step.do(), (broker.RoomPresence{Count: step.count, Changed: step.first}); got != want {
			t.Fatalf("%s: %+v, want %+v", step.what, got, want)
		}
	}
}

func (s *suite) repeatedJoinChangesNothing(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	alice := at("node-a", conn("c1", "alice"))
	join(t, a, "lobby", alice)
	if got, want := join(t, a, "lobby", alice), (broker.RoomPresence{Count: 1}); got != want {
		t.Fatalf("second join of the same connection: %+v, want %+v", got, want)
	}
	if got, want := members(t, b, "lobby"), []protocol.Member{{User: "alice", Connections: 1}}; !sameMembers(got, want) {
		t.Fatalf("after a repeated join: members = %+v, want %+v", got, want)
	}
	if got, want := leave(t, a, "lobby", alice), (broker.RoomPresence{Count: 0, Changed: true}); got != want {
		t.Fatalf("one leave after two joins: %+v, want %+v (a join is not counted twice)", got, want)
	}
}

func (s *suite) concurrentJoinsOfOneUserChangeItOnce(t *testing.T) {
	e := s.env(t, Options)
	nodes := []*node{e.node(), e.node()}
	const users, perUser = 5, 10
	type result struct {
		c broker.Conn
		p broker.RoomPresence
	}
	run := func(op func(n broker.Broker, c broker.Conn) (broker.RoomPresence, error)) []result {
		results := make(chan result, users*perUser)
		errs := make(chan error, users*perUser)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < users*perUser; i++ {
			n := nodes[i%len(nodes)]
			c := at(fmt.Sprintf("node-%d", i%len(nodes)), conn(fmt.Sprintf("c%d", i), fmt.Sprintf("user%d", i%users)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				p, err := op(n, c)
				if err != nil {
					errs <- err
					return
				}
				results <- result{c, p}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		close(results)
		for err := range errs {
			t.Fatal(err)
		}
		var out []result
		for r := range results {
			out = append(out, r)
		}
		return out
	}
	changedPerUser := func(rs []result) map[string]int {
		changed := make(map[string]int)
		for _, r := range rs {
			if r.p.Changed {
				changed[r.c.User]++
			}
			if r.p.Count < 0 || r.p.Count > users {
				t.Fatalf("%+v reported count %d, want 0..%d", r.c, r.p.Count, users)
			}
		}
		return changed
	}
	joins := run(func(n broker.Broker, c broker.Conn) (broker.RoomPresence, error) {
		return n.Join(context.Background(), "lobby", c)
	})
	for u := 0; u < users; u++ {
		if user := fmt.Sprintf("user%d", u); changedPerUser(joins)[user] != 1 {
			t.Fatalf("%d of %s's %d concurrent joins reported Changed, want exactly 1", changedPerUser(joins)[user], user, perUser)
		}
	}
	page := membersPage(t, nodes[0], "lobby", broker.MembersQuery{})
	if page.Count != users || len(page.Members) != users {
		t.Fatalf("after the joins: count %d, members %+v, want %d users", page.Count, page.Members, users)
	}
	for _, m := range page.Members {
		if m.Connections != perUser {
			t.Fatalf("after the joins: %s has %d connections, want %d", m.User, m.Connections, perUser)
		}
	}
	leaves := run(func(n broker.Broker, c broker.Conn) (broker.RoomPresence, error) {
		return n.Leave(context.Background(), "lobby", c)
	})
	for u := 0; u < users; u++ {
		if user := fmt.Sprintf("user%d", u); changedPerUser(leaves)[user] != 1 {
			t.Fatalf("%d of %s's %d concurrent leaves reported Changed, want exactly 1", changedPerUser(leaves)[user], user, perUser)
		}
	}
	if page := membersPage(t, nodes[1], "lobby", broker.MembersQuery{}); page.Count != 0 || len(page.Members) != 0 {
		t.Fatalf("after every leave: %+v, want an empty room", page)
	}
}

func (s *suite) membersPagesAreSortedAfterExclusiveAndCounted(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	// Joined out of order, over two nodes; alice twice.
	present(t, a, "node-a", conn("c1", "dave"), "lobby")
	present(t, b, "node-b", conn("c2", "alice"), "lobby")
	present(t, a, "node-a", conn("c3", "erin"), "lobby")
	present(t, a, "node-a", conn("c4", "bob"), "lobby")
	present(t, a, "node-a", conn("c5", "alice"), "lobby")
	present(t, b, "node-b", conn("c6", "carol"), "lobby")
	present(t, b, "node-b", conn("c7", "Zed"), "other") // in another room: not counted
	m := func(user string, n int) protocol.Member { return protocol.Member{User: user, Connections: n} }
	all := []protocol.Member{m("alice", 2), m("bob", 1), m("carol", 1), m("dave", 1), m("erin", 1)}
	tests := []struct {
		q    broker.MembersQuery
		want []protocol.Member
	}{
		{broker.MembersQuery{}, all},
		{broker.MembersQuery{Limit: 2}, all[:2]},
		{broker.MembersQuery{After: "bob", Limit: 2}, all[2:4]},
		{broker.MembersQuery{After: "dave", Limit: 2}, all[4:]},
		{broker.MembersQuery{After: "erin", Limit: 2}, nil},
		{broker.MembersQuery{After: "zz"}, nil},
		{broker.MembersQuery{After: "b"}, all[1:]},     // not a member: starts at the next user
		{broker.MembersQuery{After: "alice"}, all[1:]}, // exclusive
		{broker.MembersQuery{After: "Alice"}, all},     // byte order: upper case first
		{broker.MembersQuery{Limit: 100}, all},         // a limit past the end
		{broker.MembersQuery{After: "carol", Limit: 1}, all[3:4]},
	}
	for _, tc := range tests {
		for i, n := range []*node{a, b} {
			page := membersPage(t, n, "lobby", tc.q)
			if !sameMembers(page.Members, tc.want) || page.Count != len(all) {
				t.Fatalf("node %d: members %+v = %+v (count %d), want %+v (count %d)", i, tc.q, page.Members, page.Count, tc.want, len(all))
			}
		}
	}
	if page := membersPage(t, a, "empty", broker.MembersQuery{Limit: 10}); page.Count != 0 || len(page.Members) != 0 {
		t.Fatalf("a room nobody joined: %+v, want no members and count 0", page)
	}
}

func (s *suite) pagingAThousandUsersSeesEachOnce(t *testing.T) {
	e := s.env(t, Options)
	nodes := []*node{e.node(), e.node()}
	const users, pageSize, workers = 1000, 100, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < users; i += workers {
				c := at(fmt.Sprintf("node-%d", i%2), conn(fmt.Sprintf("c%d", i), fmt.Sprintf("user%04d", i)))
				if _, err := nodes[i%2].Join(context.Background(), "big", c); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("join: %v", err)
	}
	var seen []string
	q := broker.MembersQuery{Limit: pageSize}
	for pages := 0; ; pages++ {
		if pages > users/pageSize {
			t.Fatalf("paging went on past %d pages", pages)
		}
		page := membersPage(t, nodes[pages%2], "big", q)
		if page.Count != users {
			t.Fatalf("page %d: count %d, want %d", pages, page.Count, users)
		}
		if len(page.Members) == 0 {
			break
		}
		if len(page.Members) > pageSize {
			t.Fatalf("page %d has %d members, limit %d", pages, len(page.Members), pageSize)
		}
		for _, m := range page.Members {
			if m.Connections != 1 {
				t.Fatalf("%s has %d connections, want 1", m.User, m.Connections)
			}
			seen = append(seen, m.User)
		}
		q.After = page.Members[len(page.Members)-1].User
	}
	if len(seen) != users || !sort.StringsAreSorted(seen) {
		t.Fatalf("paging saw %d users (sorted: %v), want %d in order", len(seen), sort.StringsAreSorted(seen), users)
	}
	for i, user := range seen {
		if want := fmt.Sprintf("user%04d", i); user != want {
			t.Fatalf("user %d of the pages is %s, want %s (each once)", i, user, want)
		}
	}
}

func (s *suite) disconnectUpdatesCountsInEveryRoom(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	bob := present(t, a, "node-a", conn("c1", "bob"), "lobby", "other", "third")
	present(t, b, "node-b", conn("c2", "alice"), "lobby")
	present(t, b, "node-b", conn("c3", "bob"), "third")
	if err := a.Disconnect(ctxFor(t), bob); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
	want := map[string]int{"lobby": 1, "other": 0, "third": 1}
	for room, count := range want {
		if page := membersPage(t, b, room, broker.MembersQuery{}); page.Count != count {
			t.Fatalf("after bob's connection c1 disconnected: %s counts %d (%+v), want %d", room, page.Count, page.Members, count)
		}
	}
	if got, want := rooms(t, b), []broker.RoomInfo{{Room: "lobby", Members: 1}, {Room: "third", Members: 1}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("rooms after the disconnect = %+v, want %+v", got, want)
	}
	if got := join(t, b, "other", at("node-b", conn("c4", "carol"))); got != (broker.RoomPresence{Count: 1, Changed: true}) {
		t.Fatalf("carol joining the room bob's disconnect emptied: %+v, want count 1, changed", got)
	}
}

func (s *suite) deadNodeLeavesTheCountWithoutLeave(t *testing.T) {
	e := s.env(t, Options)
	dying, live := e.node(), e.node()
	present(t, dying, "node-dying", conn("c1", "alice"), "lobby")
	present(t, dying, "node-dying", conn("c2", "bob"), "lobby")
	present(t, live, "node-live", conn("c3", "bob"), "lobby")
	present(t, live, "node-live", conn("c4", "carol"), "lobby")
	if page := membersPage(t, live, "lobby", broker.MembersQuery{}); page.Count != 3 {
		t.Fatalf("before the node died: count %d, want 3", page.Count)
	}
	e.die(dying)
	want := []protocol.Member{{User: "bob", Connections: 1}, {User: "carol", Connections: 1}}
	e.eventually(e.opts.PresenceTTL+presenceSlack, "the dead node's connections leaving the count", func() bool {
		page := membersPage(t, live, "lobby", broker.MembersQuery{})
		return page.Count == 2 && sameMembers(page.Members, want)
	})
	// The room's index lost alice for good: she can be new to it again.
	if got := join(t, live, "lobby", at("node-live", conn("c5", "alice"))); got != (broker.RoomPresence{Count: 3, Changed: true}) {
		t.Fatalf("alice joining again after her node died: %+v, want count 3, changed", got)
	}
	if got := leave(t, live, "lobby", at("node-live", conn("c3", "bob"))); got != (broker.RoomPresence{Count: 2, Changed: true}) {
		t.Fatalf("bob's live connection leaving after his dead one expired: %+v, want count 2, changed", got)
	}
}

func (s *suite) presenceEventReachesRoomSubscribersIntact(t *testing.T) {
	e := s.env(t, Options)
	pub, sub, other := e.node(), e.node(), e.node()
	subscribe(t, sub, broker.Room("lobby"))
	subscribe(t, other, broker.Room("elsewhere"), broker.User("lobby"))
	sent := []broker.Delivery{
		{Kind: broker.KindPresence, Topic: broker.Room("lobby"), User: "alice", Joined: true},
		{Kind: broker.KindPresence, Topic: broker.Room("lobby"), User: "bob+-P"},
		{Kind: broker.KindPresence, Topic: broker.Room("lobby"), User: "alice"},
	}
	for _, d := range sent {
		emit(t, pub, d)
	}
	sub.waitTopic(t, broker.Room("lobby"), len(sent))
	if got := e.settle(sub, pub); !reflect.DeepEqual(got, sent) {
		t.Fatalf("subscriber received %+v, want %+v in order", got, sent)
	}
	if got := e.settle(other, pub); len(got) != 0 {
		t.Fatalf("a node not subscribed to room lobby received%s", describe(got))
	}
}

func (s *suite) publishWithCancelledContextFails(t *testing.T) {
	e := s.env(t, Options)
	n := e.node()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if m, err := n.Publish(ctx, broker.Publication{Room: "lobby", From: "alice", Text: "x", ID: "m1"}); err == nil {
		t.Fatalf("publish with a cancelled context succeeded: %+v", m)
	}
}

func (s *suite) pingAnswers(t *testing.T) {
	e := s.env(t, Options)
	if err := e.node().Ping(ctxFor(t)); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func session(t *testing.T, n broker.Broker, client string) (broker.Conn, bool) {
	t.Helper()
	c, ok, err := n.Session(ctxFor(t), client)
	if err != nil {
		t.Fatalf("session %s: %v", client, err)
	}
	return c, ok
}

// A session's record (its node and key hash) is found by any node from
// Connect to Disconnect, and outlives PresenceTTL while its node lives.
func (s *suite) sessionIsFoundOnEveryNodeWhileConnected(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	c := broker.Conn{Client: "s1", User: "ann", Node: "node-a", KeyHash: "hash-1"}
	if err := a.Connect(ctxFor(t), c); err != nil {
		t.Fatal(err)
	}
	for i, n := range []*node{a, b} {
		got, ok := session(t, n, "s1")
		if !ok || got.Node != "node-a" || got.User != "ann" || got.KeyHash != "hash-1" {
			t.Fatalf("node %d: session = %+v, %v; want node-a with hash-1", i, got, ok)
		}
	}
	if _, ok := session(t, b, "s2"); ok {
		t.Fatal("an unknown session was found")
	}
	e.cluster.Advance(t, 2*e.opts.PresenceTTL+500*time.Millisecond)
	if _, ok := session(t, b, "s1"); !ok {
		t.Fatal("a live node's session expired")
	}
	if err := a.Disconnect(ctxFor(t), c); err != nil {
		t.Fatal(err)
	}
	if got, ok := session(t, b, "s1"); ok {
		t.Fatalf("after Disconnect the session is still found: %+v", got)
	}
}

// A node that dies takes its sessions with it within PresenceTTL.
func (s *suite) deadNodesSessionsExpire(t *testing.T) {
	e := s.env(t, Options)
	dying, live := e.node(), e.node()
	if err := dying.Connect(ctxFor(t), broker.Conn{Client: "s1", User: "ann", Node: "node-dying", KeyHash: "h"}); err != nil {
		t.Fatal(err)
	}
	e.die(dying)
	e.eventually(e.opts.PresenceTTL+presenceSlack, "the dead node's session expiring", func() bool {
		_, ok := session(t, live, "s1")
		return !ok
	})
}

// Commands for a session go to its node's topic, and only there, with the
// session and the frame unchanged (newlines included).
func (s *suite) commandReachesOnlyItsNodeIntact(t *testing.T) {
	e := s.env(t, Options)
	nodes := e.nodes(3)
	for i, n := range nodes {
		subscribe(t, n, broker.NodeTopic(fmt.Sprint("node-", i)))
	}
	subscribe(t, nodes[2], broker.User("node-1")) // same name, other kind
	sent := broker.Delivery{Kind: broker.KindCommand, Topic: broker.NodeTopic("node-1"), Client: "node-1-7",
		Payload: []byte("{\"type\":\"rooms\",\"id\":1}\n{\"type\":\"send\",\"text\":\"a\\nb\"}")}
	emit(t, nodes[0], sent)
	nodes[1].waitTopic(t, sent.Topic, 1)
	for i, n := range nodes {
		got := e.settle(n, nodes[0])
		switch {
		case i == 1 && (len(got) != 1 || !reflect.DeepEqual(got[0], sent)):
			t.Fatalf("node 1 received%s, want exactly %+v", describe(got), sent)
		case i != 1 && len(got) != 0:
			t.Fatalf("node %d received%s, want nothing", i, describe(got))
		}
	}
}

// Grants made through one node are seen by every node, listed sorted,
// idempotent, and outlive the node that made them and PresenceTTL.
func (s *suite) grantsAreSharedSortedAndDurable(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	ctx := ctxFor(t)
	for _, u := range []string{"zoe", "ann", "bob", "ann"} {
		if err := a.Grant(ctx, "team", u); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Grant(ctx, "other", "carl"); err != nil {
		t.Fatal(err)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	e.cluster.Advance(t, 2*e.opts.PresenceTTL+500*time.Millisecond)
	got, err := b.Grants(ctx, "team")
	if err != nil || !reflect.DeepEqual(got, []string{"ann", "bob", "zoe"}) {
		t.Fatalf("grants of team: %v %v, want ann bob zoe", got, err)
	}
	for user, want := range map[string]bool{"ann": true, "carl": false, "nobody": false} {
		if ok, err := b.HasGrant(ctx, "team", user); err != nil || ok != want {
			t.Fatalf("HasGrant(team, %s) = %v %v, want %v", user, ok, err, want)
		}
	}
	if err := b.Revoke(ctx, "team", "ann"); err != nil {
		t.Fatal(err)
	}
	if err := b.Revoke(ctx, "team", "nobody"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.HasGrant(ctx, "team", "ann"); ok {
		t.Fatal("a revoked grant is still held")
	}
	if got, _ := b.Grants(ctx, "empty"); got == nil || len(got) != 0 {
		t.Fatalf("grants of a room without any: %#v, want an empty list", got)
	}
}

// Every live node is listed with its connections, and users are counted
// once however many connections and nodes they have; a closed node leaves
// the list.
func (s *suite) nodesAndUsersAreCountedClusterWide(t *testing.T) {
	e := s.env(t, Options)
	a, b := e.node(), e.node()
	ctx := ctxFor(t)
	for _, p := range []struct {
		n *node
		c broker.Conn
	}{{a, conn("c1", "ann")}, {a, conn("c2", "ann")}, {b, conn("c3", "bob")}, {b, conn("c4", "ann")}} {
		if err := p.n.Connect(ctx, p.c); err != nil {
			t.Fatal(err)
		}
	}
	counts := func() string {
		nodes, err := b.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range nodes {
			if n.Node == "" || n.Started.IsZero() {
				t.Fatalf("node %+v", n)
			}
			out = append(out, fmt.Sprint(n.Connections))
		}
		slices.Sort(out)
		return strings.Join(out, ",")
	}
	e.eventually(e.opts.PresenceTTL+presenceSlack, "both nodes listed with 2 connections", func() bool { return counts() == "2,2" })
	users := func() int {
		n, err := a.Users(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := users(); got != 2 {
		t.Fatalf("users = %d, want 2 (ann, bob)", got)
	}
	for _, c := range []broker.Conn{conn("c1", "ann"), conn("c2", "ann")} {
		if err := a.Disconnect(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if got := users(); got != 2 {
		t.Fatalf("users = %d with ann still on b, want 2", got)
	}
	if err := b.Disconnect(ctx, conn("c4", "ann")); err != nil {
		t.Fatal(err)
	}
	if got := users(); got != 1 {
		t.Fatalf("users = %d after ann's last connection, want 1", got)
	}
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	e.eventually(e.opts.PresenceTTL+presenceSlack, "the closed node leaving the list", func() bool {
		nodes, err := a.Nodes(ctx)
		return err == nil && len(nodes) == 1
	})
}

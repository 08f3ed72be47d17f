// Package chat is one node of the chat service, whatever transport its
// clients use: it admits sessions and runs their commands (Session), carries
// out the REST API's operations, and wires the Hub to the broker. The
// transports (internal/transport/ws, internal/transport/sse) carry sessions
// to and from their clients.
package chat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"chat/internal/admission"
	"chat/internal/broker"
	"chat/internal/config"
	"chat/internal/hub"
	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/core/logx"
)

// brokerTimeout bounds every broker call, so that a command answers
// "unavailable" instead of hanging while the backbone is unreachable.
const brokerTimeout = 5 * time.Second

// Node is one process of the service. Its methods are safe for concurrent use.
type Node struct {
	ID  string
	cfg config.ChatConf

	hub     *hub.Hub
	broker  broker.Broker
	subs    *subscriptions
	started time.Time

	nextID   atomic.Uint64
	received atomic.Int64

	admitted atomic.Int64 // connections admitted and not yet ended, for Chat.MaxConnections
	draining atomic.Bool
	shutdown sync.Once

	mu        sync.Mutex
	sessions  map[string]*Session // open sessions by id: commands posted over HTTP, the shutdown deadline
	userConns map[string]int      // admitted connections per user, for Chat.MaxUserConnections
	wg        sync.WaitGroup      // one per open session
	stopped   []func()            // OnStop's

	presenceStop, presenceDone chan struct{} // presenceLoop's

	archive *archive // the durable store's writer and sweeper; nil without a store
}

// Wiring is what a node gives the broker it is built on.
type Wiring struct {
	Node    string         // the node's id
	Handler broker.Handler // where the broker delivers
	// Heads and StoreDelay go into broker.Options: set with a store, so
	// that rooms continue from the store's head and are swept into it.
	Heads      func(ctx context.Context, room string) (broker.Head, error)
	StoreDelay time.Duration
}

// NewBroker makes the node's broker.
type NewBroker func(w Wiring) (broker.Broker, error)

// NewNode makes and starts a node.
func NewNode(cfg config.ChatConf, newBroker NewBroker, opts ...Option) (*Node, error) {
	if err := admission.CheckPatterns(cfg.PublicRooms); err != nil {
		return nil, fmt.Errorf("Chat.PublicRooms: %w", err)
	}
	n := &Node{
		ID:        NewNodeID(),
		cfg:       cfg,
		hub:       hub.New(4096),
		started:   time.Now(),
		sessions:  make(map[string]*Session),
		userConns: make(map[string]int),
	}
	for _, opt := range opts {
		opt(n)
	}
	w := Wiring{Node: n.ID, Handler: n.deliver}
	if n.archive != nil {
		w.Heads, w.StoreDelay = n.archive.head, storeDelay
	}
	b, err := newBroker(w)
	if err != nil {
		return nil, err
	}
	n.broker, n.subs = b, newSubscriptions(b)
	ctx, cancel := brokerContext(context.Background())
	defer cancel()
	if err := b.Subscribe(ctx, broker.NodeTopic(n.ID)); err != nil {
		// Redis is down: the node starts anyway (/readyz answers 503), and
		// the broker subscribes the topic when Redis is back.
		logx.Errorf("subscribe to the node's topic: %v (retried when the broker is back)", err)
	}
	h := n.hub
	n.presenceStop, n.presenceDone = make(chan struct{}), make(chan struct{})
	go h.Run()
	go n.presenceLoop()
	if n.archive != nil {
		n.archive.start()
	}
	return n, nil
}

// presenceLoop sends the members of each large room on this node, once
// per Chat.PresenceInterval at most and only when something changed, who
// joined and left it and how many are present (SPEC §15).
func (n *Node) presenceLoop() {
	defer close(n.presenceDone)
	interval := n.cfg.PresenceInterval
	if interval <= 0 {
		interval = time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-n.presenceStop:
			return
		case <-ticker.C:
			n.sendPresence()
		}
	}
}

func (n *Node) sendPresence() {
	for _, pc := range n.hub.TakePresence() {
		ctx, cancel := brokerContext(context.Background())
		page, err := n.broker.Members(ctx, pc.Room, broker.MembersQuery{Limit: 1})
		cancel()
		if err != nil {
			_ = brokerError("presence count of "+pc.Room, err) // best effort: these changes are not told
			continue
		}
		event := protocol.PresenceDiff{Type: "presence", Room: pc.Room, Count: page.Count,
			Joined: firstNames(pc.Joined), Left: firstNames(pc.Left)}
		n.hub.Deliver(broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room(pc.Room), Payload: protocol.MustEncode(event)})
	}
}

// firstNames caps a presence event's list; the count covers the rest.
func firstNames(users []string) []string {
	return nonNil(users[:min(len(users), protocol.MaxPresenceNames)])
}

// NewNodeID is random per process, so that two replicas on one host differ.
func NewNodeID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newID makes an id unique across the cluster: the node's id and a counter.
func (n *Node) newID() string { return n.idFor(n.nextID.Add(1)) }

func (n *Node) idFor(seq uint64) string { return fmt.Sprintf("%s-%x", n.ID, seq) }

func brokerContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, brokerTimeout)
}

// brokerError turns a broker failure into the protocol's "unavailable".
func brokerError(op string, err error) error {
	if err == nil {
		return nil
	}
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return err
	}
	metrics.brokerErrors.Inc()
	logx.Errorf("broker %s: %v", op, err)
	return protocol.Errorf(protocol.CodeUnavailable, "the message broker is unavailable; retrying with the same key is safe")
}

// Publish validates and publishes a room message from user.
func (n *Node) Publish(ctx context.Context, room, from, text, key string) (protocol.Message, error) {
	if err := protocol.CheckRoom(room); err != nil {
		return protocol.Message{}, err
	}
	if err := protocol.CheckText(text, n.cfg.MaxText); err != nil {
		return protocol.Message{}, err
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	start := time.Now()
	msg, err := n.broker.Publish(ctx, broker.Publication{Room: room, From: from, Text: text, Key: key, ID: n.newID()})
	metrics.publishSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		return msg, brokerError("publish to "+room, err)
	}
	n.received.Add(1)
	if n.archive != nil {
		if err := n.archive.add(ctx, msg); err != nil {
			return msg, storeError(err)
		}
	}
	return msg, nil
}

// History reads a page of a room's history: limit 1..100 (0: the default
// page), before a seq (0: none).
func (n *Node) History(ctx context.Context, room string, before int64, limit int) ([]protocol.Message, error) {
	if err := protocol.CheckRoom(room); err != nil {
		return nil, err
	}
	if limit == 0 {
		limit = defaultHistory
	}
	if limit < 1 || limit > maxHistoryPage {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "limit must be 1 to %d, or 0 for %d", maxHistoryPage, defaultHistory)
	}
	if before < 0 {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "before must be a seq")
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	h, err := n.broker.History(ctx, room, broker.HistoryQuery{Before: before, Limit: limit})
	if err != nil {
		return nil, brokerError("history of "+room, err)
	}
	if n.archive != nil {
		// Past the broker's window, the store has the room back to its
		// first message (SPEC §14).
		if err := n.archive.older(ctx, room, &h, 0, before, limit); err != nil {
			return nil, storeError(err)
		}
	}
	return nonNil(h.Messages), nil
}

// storeError turns a store failure into the protocol's "unavailable".
func storeError(err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	logx.Errorf("store: %v", err)
	return protocol.Errorf(protocol.CodeUnavailable, "the message store is unavailable")
}

const (
	defaultHistory = 50  // messages in a join reply and a history page by default
	maxHistoryPage = 100 // largest history page
)

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// Members lists a page of a room's members cluster-wide, after the user
// after ("": from the first), at most limit (0: the default page, which is
// the whole of a room within Chat.PresenceEventLimit), and counts them all.
func (n *Node) Members(ctx context.Context, room, after string, limit int) (broker.MembersPage, error) {
	if err := protocol.CheckRoom(room); err != nil {
		return broker.MembersPage{}, err
	}
	if limit == 0 {
		limit = n.membersPage()
	}
	if largest := max(maxMembersPage, n.membersPage()); limit < 0 || limit > largest {
		return broker.MembersPage{}, protocol.Errorf(protocol.CodeBadRequest, "limit must be 1 to %d, or 0 for %d", largest, n.membersPage())
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	page, err := n.broker.Members(ctx, room, broker.MembersQuery{After: after, Limit: limit})
	page.Members = nonNil(page.Members)
	return page, brokerError("members of "+room, err)
}

const (
	// maxMembersPage is the largest page of members a client may ask for.
	maxMembersPage = 1000
	// largeRoomJoinPage is how many members a join reply lists of a room
	// over Chat.PresenceEventLimit; members pages through the rest.
	largeRoomJoinPage = 100
)

// membersPage is the default page of members: a room small enough for
// joined/left events is listed whole.
func (n *Node) membersPage() int { return max(n.cfg.PresenceEventLimit, 0) }

// largeRoom reports whether a room of size users sends presence diffs
// instead of joined/left (Chat.PresenceEventLimit; 0: never).
func (n *Node) largeRoom(size int) bool {
	return n.cfg.PresenceEventLimit > 0 && size > n.cfg.PresenceEventLimit
}

// Access reports whether user, whose token allows tokenRooms, may use room
// (SPEC §13): a public room (Chat.PublicRooms), one the token covers, or
// one the user was granted; else the error forbidden.
func (n *Node) Access(ctx context.Context, room, user string, tokenRooms []string) error {
	if admission.MatchAny(n.cfg.PublicRooms, room) || admission.MatchAny(tokenRooms, room) {
		return nil
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	ok, err := n.broker.HasGrant(ctx, room, user)
	if err != nil {
		return brokerError("grant of "+room, err)
	}
	if !ok {
		return protocol.Errorf(protocol.CodeForbidden, "%s is a private room", room)
	}
	return nil
}

// ReaderAccess is Access for a reader of the REST API: the admin key reads
// every room.
func (n *Node) ReaderAccess(ctx context.Context, room string, reader admission.Identity) error {
	if err := protocol.CheckRoom(room); err != nil || reader.Admin {
		return err
	}
	return n.Access(ctx, room, reader.User, reader.Rooms)
}

// Rooms lists the rooms with someone present, cluster-wide.
func (n *Node) Rooms(ctx context.Context) ([]broker.RoomInfo, error) {
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	r, err := n.broker.Rooms(ctx)
	return nonNil(r), brokerError("rooms", err)
}

// UserConnections counts a user's connections cluster-wide.
func (n *Node) UserConnections(ctx context.Context, user string) (int, error) {
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	count, err := n.broker.UserConnections(ctx, user)
	return count, brokerError("presence of "+user, err)
}

// Direct sends a direct message to every connection of user to, and a copy
// to the sender's other connections (all but exclude). It reports how many
// connections the recipient has. None is the error user_offline without a
// store; with one, the message is stored for the recipient's next
// connection (0 connections and no error).
func (n *Node) Direct(ctx context.Context, from, to, text, exclude string) (protocol.Direct, int, error) {
	if err := protocol.CheckText(text, n.cfg.MaxText); err != nil {
		return protocol.Direct{}, 0, err
	}
	online, err := n.UserConnections(ctx, to)
	if err != nil {
		return protocol.Direct{}, 0, err
	}
	if online == 0 && n.archive == nil {
		return protocol.Direct{}, 0, protocol.Errorf(protocol.CodeUserOffline, "%s is not connected", to)
	}
	d := protocol.Direct{Type: "direct", ID: n.newID(), From: from, To: to, Text: text, TS: time.Now().UnixMilli()}
	payload := protocol.MustEncode(d)
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	if online == 0 {
		// Kept for the recipient's next connection (SPEC §14).
		if err := n.archive.saveDirect(ctx, d); err != nil {
			return d, 0, err
		}
	} else if err := n.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.User(to), Payload: payload, Exclude: exclude}); err != nil {
		return d, 0, brokerError("direct to "+to, err)
	}
	n.received.Add(1)
	if from != to {
		if err := n.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.User(from), Payload: payload, Exclude: exclude}); err != nil {
			return d, 0, brokerError("direct copy to "+from, err)
		}
	}
	return d, online, nil
}

// Notice announces text to every connection, or to a room's members.
func (n *Node) Notice(ctx context.Context, room, text string) (protocol.Notice, error) {
	topic := broker.BroadcastTopic
	if room != "" {
		if err := protocol.CheckRoom(room); err != nil {
			return protocol.Notice{}, err
		}
		topic = broker.Room(room)
	}
	if err := protocol.CheckText(text, n.cfg.MaxText); err != nil {
		return protocol.Notice{}, err
	}
	notice := protocol.Notice{Type: "notice", Text: text, TS: time.Now().UnixMilli(), Room: room}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	err := n.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: topic, Payload: protocol.MustEncode(notice)})
	return notice, brokerError("notice", err)
}

// Kick closes every connection of user on every node with 4003 and reports
// how many there were.
func (n *Node) Kick(ctx context.Context, user string) (int, error) {
	count, err := n.UserConnections(ctx, user)
	if err != nil || count == 0 {
		return 0, err
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	err = n.broker.Emit(ctx, broker.Delivery{Kind: broker.KindKick, Topic: broker.User(user)})
	return count, brokerError("kick "+user, err)
}

// Stats are this node's counters (GET /api/stats).
type Stats struct {
	Node          string
	Connections   int64
	Rooms         int64
	UptimeSeconds int64
	Received      int64
	Delivered     int64
	SlowConsumers int64
}

// Stats reads this node's counters.
func (n *Node) Stats() Stats {
	s := n.hub.Stats()
	return Stats{
		Node:          n.ID,
		Connections:   s.Connections,
		Rooms:         s.Rooms,
		UptimeSeconds: int64(time.Since(n.started).Seconds()),
		Received:      n.received.Load(),
		Delivered:     s.Delivered,
		SlowConsumers: s.SlowConsumers,
	}
}

// Ready reports whether the node takes connections: the Hub runs, the node
// is not draining, and the broker answers.
func (n *Node) Ready(ctx context.Context) error {
	if n.draining.Load() || !n.hub.Running() {
		return protocol.Errorf(protocol.CodeUnavailable, "shutting down")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := n.broker.Ping(ctx); err != nil {
		return protocol.Errorf(protocol.CodeUnavailable, "broker unavailable: %v", err)
	}
	return nil
}

// OnStop registers f to run at shutdown once every session has finished:
// a transport's shared writers stop there.
func (n *Node) OnStop(f func()) {
	n.mu.Lock()
	n.stopped = append(n.stopped, f)
	n.mu.Unlock()
}

// Config is the node's configuration, for its transports.
func (n *Node) Config() config.ChatConf { return n.cfg }

// StopAccepting makes /readyz and new sessions answer 503.
func (n *Node) StopAccepting() { n.draining.Store(true) }

// Shutdown stops taking connections, closes every connection with 1001
// after what is queued is written (bounded by Chat.DrainTimeout), then stops
// the Hub and the broker. Every call returns once that is done.
func (n *Node) Shutdown() { n.shutdown.Do(n.drain) }

func (n *Node) drain() {
	n.StopAccepting()
	n.hub.CloseAll(hub.CloseRequest{Code: 1001, Text: "server shutting down", Flush: true})
	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(n.cfg.DrainTimeout):
		n.mu.Lock()
		for _, s := range n.sessions {
			s.transport.Abort() // what a stalled reader was not sent goes with the socket
		}
		n.mu.Unlock()
		<-done
	}
	for _, stop := range n.stopped {
		stop() // no session is left to carry
	}
	close(n.presenceStop)
	<-n.presenceDone
	if n.archive != nil {
		n.archive.close() // what was published is written before the broker goes
	}
	n.hub.Stop()
	if err := n.broker.Close(); err != nil {
		logx.Errorf("close broker: %v", err)
	}
}

// Cluster is every live node and the cluster's totals (GET /api/cluster).
type Cluster struct {
	Nodes       []broker.NodeInfo
	Connections int
	Users       int
	Rooms       int
}

// Cluster reads the live nodes and counts connections, distinct users and
// rooms with someone present, cluster-wide.
func (n *Node) Cluster(ctx context.Context) (Cluster, error) {
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	var c Cluster
	var err error
	if c.Nodes, err = n.broker.Nodes(ctx); err != nil {
		return c, brokerError("nodes", err)
	}
	for _, node := range c.Nodes {
		c.Connections += node.Connections
	}
	if c.Users, err = n.broker.Users(ctx); err != nil {
		return c, brokerError("users", err)
	}
	rooms, err := n.broker.Rooms(ctx)
	c.Rooms = len(rooms)
	return c, brokerError("rooms", err)
}

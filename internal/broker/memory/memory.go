// Package memory is the in-process broker: one Backend holds the rooms,
// history and presence, and every node made from it shares them, as
// replicas share Redis. A single server uses one node; tests use several.
package memory

import (
	"context"
	"sort"
	"sync"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"
)

// Backend is the shared state of every node made from it.
type Backend struct {
	opts broker.Options
	now  func() time.Time

	mu    sync.Mutex // guards everything below; held while a publication is handed to nodes, which keeps seq order
	rooms map[string]*room
	nodes map[*node]struct{}
	conns map[string]broker.Conn            // by client id
	joins map[string]map[string]broker.Conn // room -> client id -> conn
}

type room struct {
	epoch   string
	seq     int64
	history []protocol.Message // oldest first; the last HistorySize are kept (kept), and up to as many older wait to be trimmed
	expires time.Time          // history, seq and epoch go together after HistoryTTL idle
	keys    map[string]keyEntry
}

type keyEntry struct {
	msg     protocol.Message
	expires time.Time
}

// NewBackend makes an empty backend.
func NewBackend(opts broker.Options) *Backend {
	return &Backend{
		opts:  opts.WithDefaults(),
		now:   time.Now,
		rooms: make(map[string]*room),
		nodes: make(map[*node]struct{}),
		conns: make(map[string]broker.Conn),
		joins: make(map[string]map[string]broker.Conn),
	}
}

// Node makes a broker for one node, delivering to handler.
func (b *Backend) Node(handler broker.Handler) broker.Broker {
	n := &node{backend: b, handler: handler, topics: make(map[broker.Topic]struct{})}
	b.mu.Lock()
	b.nodes[n] = struct{}{}
	b.mu.Unlock()
	return n
}

type node struct {
	backend *Backend
	handler broker.Handler
	topics  map[broker.Topic]struct{} // guarded by backend.mu
	closed  bool                      // guarded by backend.mu
	conns   map[string]struct{}       // this node's client ids; guarded by backend.mu
}

// roomLocked returns the room's live state, starting a new epoch when it
// has none or its history expired. b.mu is held.
func (b *Backend) roomLocked(name string) *room {
	now := b.now()
	r := b.rooms[name]
	if r == nil || now.After(r.expires) {
		r = &room{epoch: broker.NewEpoch(), keys: make(map[string]keyEntry)}
		b.rooms[name] = r
	}
	r.expires = now.Add(b.opts.HistoryTTL)
	return r
}

// deliverLocked hands d to every node subscribed to its topic. b.mu is held,
// so deliveries keep the order in which they were made.
func (b *Backend) deliverLocked(d broker.Delivery) {
	for n := range b.nodes {
		if _, ok := n.topics[d.Topic]; ok || d.Topic.Kind == broker.TopicBroadcast {
			if !n.closed {
				n.handler(d)
			}
		}
	}
}

func (n *node) Publish(ctx context.Context, p broker.Publication) (protocol.Message, error) {
	if err := ctx.Err(); err != nil {
		return protocol.Message{}, err
	}
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.roomLocked(p.Room)
	now := b.now()
	keyID := p.From + "\x00" + p.Key
	if p.Key != "" {
		if k, ok := r.keys[keyID]; ok && now.Before(k.expires) {
			return k.msg, nil
		}
	}
	r.seq++
	msg := protocol.Message{
		Type: "message", Room: p.Room, Epoch: r.epoch, Seq: r.seq,
		ID: p.ID, From: p.From, Text: p.Text, TS: now.UnixMilli(),
	}
	r.history = append(r.history, msg)
	// Trimmed once it holds twice what is kept, not at every message: a
	// copy of the whole history per publish was most of the node's garbage.
	if size := b.opts.HistorySize; len(r.history) >= 2*size {
		n := copy(r.history, r.history[len(r.history)-size:])
		clear(r.history[n:])
		r.history = r.history[:n]
	}
	if p.Key != "" {
		for id, k := range r.keys { // keep the key map bounded by the window
			if now.After(k.expires) {
				delete(r.keys, id)
			}
		}
		r.keys[keyID] = keyEntry{msg: msg, expires: now.Add(b.opts.KeyTTL)}
	}
	b.deliverLocked(broker.Delivery{
		Kind: broker.KindMessage, Topic: broker.Room(p.Room),
		Message: msg, Payload: protocol.MustEncode(msg),
	})
	return msg, nil
}

// kept is the history a reader sees: the last size messages.
func (r *room) kept(size int) []protocol.Message {
	return r.history[max(len(r.history)-size, 0):]
}

func (n *node) History(ctx context.Context, name string, q broker.HistoryQuery) (broker.History, error) {
	if err := ctx.Err(); err != nil {
		return broker.History{}, err
	}
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.roomLocked(name)
	var msgs []protocol.Message
	for _, m := range r.kept(b.opts.HistorySize) {
		if (q.After == 0 || m.Seq > q.After) && (q.Before == 0 || m.Seq < q.Before) {
			msgs = append(msgs, m)
		}
	}
	if q.Limit > 0 && len(msgs) > q.Limit {
		msgs = msgs[len(msgs)-q.Limit:]
	}
	return broker.History{Epoch: r.epoch, Seq: r.seq, Messages: msgs}, nil
}

func (n *node) Subscribe(ctx context.Context, t broker.Topic) error {
	n.backend.mu.Lock()
	defer n.backend.mu.Unlock()
	n.topics[t] = struct{}{}
	return ctx.Err()
}

func (n *node) Unsubscribe(ctx context.Context, t broker.Topic) error {
	n.backend.mu.Lock()
	defer n.backend.mu.Unlock()
	delete(n.topics, t)
	return ctx.Err()
}

func (n *node) Emit(ctx context.Context, d broker.Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.backend.mu.Lock()
	defer n.backend.mu.Unlock()
	n.backend.deliverLocked(d)
	return nil
}

func (n *node) Connect(ctx context.Context, c broker.Conn) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conns[c.Client] = c
	if n.conns == nil {
		n.conns = make(map[string]struct{})
	}
	n.conns[c.Client] = struct{}{}
	return ctx.Err()
}

func (n *node) Disconnect(ctx context.Context, c broker.Conn) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removeConnLocked(c.Client)
	delete(n.conns, c.Client)
	return ctx.Err()
}

func (b *Backend) removeConnLocked(client string) {
	delete(b.conns, client)
	for name, members := range b.joins {
		delete(members, client)
		if len(members) == 0 {
			delete(b.joins, name)
		}
	}
}

func (n *node) Join(ctx context.Context, name string, c broker.Conn) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	members := b.joins[name]
	if members == nil {
		members = make(map[string]broker.Conn)
		b.joins[name] = members
	}
	members[c.Client] = c
	return ctx.Err()
}

func (n *node) Leave(ctx context.Context, name string, c broker.Conn) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	if members := b.joins[name]; members != nil {
		delete(members, c.Client)
		if len(members) == 0 {
			delete(b.joins, name)
		}
	}
	return ctx.Err()
}

func (n *node) Members(ctx context.Context, name string) ([]protocol.Member, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	return countByUser(b.joins[name]), ctx.Err()
}

// countByUser turns connections into members sorted by user.
func countByUser(conns map[string]broker.Conn) []protocol.Member {
	counts := make(map[string]int)
	for _, c := range conns {
		counts[c.User]++
	}
	members := make([]protocol.Member, 0, len(counts))
	for user, n := range counts {
		members = append(members, protocol.Member{User: user, Connections: n})
	}
	sort.Slice(members, func(i, j int) bool { return members[i].User < members[j].User })
	return members
}

func (n *node) Rooms(ctx context.Context) ([]broker.RoomInfo, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	rooms := make([]broker.RoomInfo, 0, len(b.joins))
	for name, members := range b.joins {
		var seq int64
		if r := b.rooms[name]; r != nil && b.now().Before(r.expires) {
			seq = r.seq
		}
		rooms = append(rooms, broker.RoomInfo{Room: name, Members: len(countByUser(members)), Seq: seq})
	}
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Room < rooms[j].Room })
	return rooms, ctx.Err()
}

func (n *node) UserConnections(ctx context.Context, user string) (int, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	count := 0
	for _, c := range b.conns {
		if c.User == user {
			count++
		}
	}
	return count, ctx.Err()
}

func (n *node) Ping(ctx context.Context) error { return ctx.Err() }

// Close stops deliveries and removes the node's presence, as a replica's
// presence would expire in Redis.
func (n *node) Close() error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	n.closed = true
	delete(b.nodes, n)
	for client := range n.conns {
		b.removeConnLocked(client)
	}
	return nil
}

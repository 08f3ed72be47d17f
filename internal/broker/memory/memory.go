// Package memory is the in-process broker: one Backend holds the rooms,
// history and presence, and every node made from it shares them, as
// replicas share Redis. A single server uses one node; tests use several.
package memory

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
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
	// oldest and newest end the list of rooms by last use (a publish or a
	// history read). Every use also sets the room's expiry to now plus
	// HistoryTTL, so the list is in expiry order too: expired rooms and
	// rooms evicted for HistoryMaxBytes both leave from the oldest end,
	// and neither needs a walk over every room.
	oldest, newest *room
	historyBytes   int64 // the estimate of every room in rooms: the sum of their bytes
	nodes          map[*node]struct{}
	conns          map[string]broker.Conn         // by client id
	userConns      map[string]int                 // user -> its connections in conns, so counting them walks nothing
	presence       map[string]*presence           // room -> who is in it
	clientRooms    map[string]map[string]struct{} // client id -> the rooms it is in
	grants         map[string]map[string]struct{} // room -> users granted access (SPEC §13); durable
	unstored       map[string]time.Time           // with Options.Heads: rooms with messages not known stored -> when due
	claims         int64                          // the last claim token handed out
}

// The history bound (HistoryMaxBytes) counts an estimate, not the heap: a
// message costs the bytes of its strings (room, epoch, id, from, text; the
// room and epoch are often shared with the room's other messages, and
// counting them anyway errs towards the bound) plus messageOverhead, and a
// room costs its name and epoch plus roomOverhead. A message counts from its
// publish until it is trimmed, expires with its room or is evicted with it,
// the ones held for the next trim (up to HistorySize more than a reader
// sees) included. Idempotency keys are not counted: they share their
// message's strings, and the KeyTTL window bounds them.
const (
	// messageOverhead is a history message's cost beyond its strings: the
	// protocol.Message in the history slice (six string headers and two
	// int64s, 112 bytes on 64-bit) and its share of the slice's spare room.
	messageOverhead = 160
	// roomOverhead is a room's fixed cost: the room, its entry in the
	// rooms map and its empty key map.
	roomOverhead = 256
)

// messageBytes is the estimate of what m costs in history.
func messageBytes(m protocol.Message) int64 {
	return messageOverhead + int64(len(m.Room)+len(m.Epoch)+len(m.ID)+len(m.From)+len(m.Text))
}

// roomBytes is the estimate of what a room costs without messages.
func roomBytes(name, epoch string) int64 {
	return roomOverhead + int64(len(name)+len(epoch))
}

type room struct {
	name    string
	epoch   string
	seq     int64
	history []protocol.Message // oldest first; the last HistorySize are kept (kept), and up to as many older wait to be trimmed
	expires time.Time          // history, seq and epoch go together after HistoryTTL idle
	keys    map[string]keyEntry
	bytes   int64 // the estimate of the room and every message in history
	stored  int64 // with Options.Heads: every seq up to stored is in the store
	claim   int64 // the token of the room's current ClaimUnstored, 0 for none

	older, newer *room // neighbours in the Backend's list by last use
}

type keyEntry struct {
	msg     protocol.Message
	expires time.Time
}

// NewBackend makes an empty backend.
func NewBackend(opts broker.Options) *Backend {
	return &Backend{
		opts:      opts.WithDefaults(),
		now:       time.Now,
		rooms:     make(map[string]*room),
		nodes:     make(map[*node]struct{}),
		conns:     make(map[string]broker.Conn),
		userConns: make(map[string]int),
		presence:  make(map[string]*presence),
		unstored:  make(map[string]time.Time),

		clientRooms: make(map[string]map[string]struct{}),
	}
}

// Node makes a broker for one node, delivering to handler.
func (b *Backend) Node(handler broker.Handler) broker.Broker {
	return b.NamedNode(broker.NewEpoch(), handler)
}

// NamedNode is Node for the node with the id (Nodes lists it).
func (b *Backend) NamedNode(id string, handler broker.Handler) broker.Broker {
	n := &node{backend: b, id: id, started: time.Now(), handler: handler, topics: make(map[broker.Topic]struct{})}
	b.mu.Lock()
	b.nodes[n] = struct{}{}
	b.mu.Unlock()
	return n
}

type node struct {
	backend *Backend
	id      string
	started time.Time
	handler broker.Handler
	topics  map[broker.Topic]struct{} // guarded by backend.mu
	closed  bool                      // guarded by backend.mu
	conns   map[string]struct{}       // this node's client ids; guarded by backend.mu
}

// room returns the room's live state with b.mu held, starting its
// sequence when it has none: a new room, or one whose history expired or
// was evicted. It counts as a use of the room. With Options.Heads the
// sequence continues from the store's head, asked without b.mu held.
func (b *Backend) room(ctx context.Context, name string) (*room, error) {
	b.mu.Lock()
	if b.opts.Heads == nil || b.liveLocked(name) != nil {
		return b.roomLocked(name, broker.Head{}), nil
	}
	b.mu.Unlock()
	head, err := b.opts.Heads(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("head of %s: %w: %v", name, broker.ErrUnavailable, err)
	}
	b.mu.Lock()
	return b.roomLocked(name, head), nil
}

// liveLocked is the room's state when it has one. b.mu is held.
func (b *Backend) liveLocked(name string) *room {
	b.expireLocked(b.now())
	return b.rooms[name]
}

// roomLocked returns the room's live state, starting its sequence at head
// when it has none (a new epoch when head has none). It counts as a use
// of the room. b.mu is held.
func (b *Backend) roomLocked(name string, head broker.Head) *room {
	now := b.now()
	b.expireLocked(now)
	r := b.rooms[name]
	if r == nil {
		epoch := head.Epoch
		if epoch == "" {
			epoch = broker.NewEpoch()
		}
		r = &room{name: name, epoch: epoch, seq: head.Seq, stored: head.Seq, keys: make(map[string]keyEntry), bytes: roomBytes(name, epoch)}
		b.rooms[name] = r
		b.historyBytes += r.bytes
	} else {
		b.unlinkLocked(r)
	}
	b.linkNewestLocked(r)
	r.expires = now.Add(b.opts.HistoryTTL)
	b.boundLocked(r)
	return r
}

// expireLocked drops every room whose history expired. They are the least
// recently used, so it stops at the first live room: O(1) per call, plus
// O(1) per room dropped.
func (b *Backend) expireLocked(now time.Time) {
	for b.oldest != nil && now.After(b.oldest.expires) {
		b.dropLocked(b.oldest)
	}
}

// boundLocked brings the history under HistoryMaxBytes after room r, the
// most recently used, grew. A room that alone is over the bound loses its
// oldest messages first, down to the last one (an acknowledged seq stays in
// history until another replaces it), since dropping other rooms could not
// make it fit; a client recovering from a seq before what is left is told
// recovered: false, as after a trim at HistorySize. Then the least recently
// used other rooms go whole, never r: a room is dropped with its history,
// seq, epoch and idempotency keys together, so that its next use starts a
// new epoch at seq 1, as after HistoryTTL, and no client can recover across
// the loss. (A key kept across it would answer a retry with a message of
// the lost epoch.)
func (b *Backend) boundLocked(r *room) {
	limit := b.opts.HistoryMaxBytes
	if limit <= 0 || b.historyBytes <= limit {
		return
	}
	for r.bytes > limit && len(r.history) > 1 {
		b.trimLocked(r, 1)
	}
	for b.historyBytes > limit && b.oldest != r {
		b.dropLocked(b.oldest)
	}
}

// trimLocked drops r's n oldest messages. It reslices rather than copies,
// so that dropping one message at a time stays O(1); the next append that
// outgrows the slice leaves the dropped slots behind.
func (b *Backend) trimLocked(r *room, n int) {
	for i := range r.history[:n] {
		b.accountLocked(r, -messageBytes(r.history[i]))
	}
	clear(r.history[:n])
	r.history = r.history[n:]
}

// accountLocked adds delta bytes to r and to the total.
func (b *Backend) accountLocked(r *room, delta int64) {
	r.bytes += delta
	b.historyBytes += delta
}

// dropLocked forgets r: history, seq, epoch and keys.
func (b *Backend) dropLocked(r *room) {
	b.unlinkLocked(r)
	delete(b.rooms, r.name)
	b.historyBytes -= r.bytes
}

func (b *Backend) unlinkLocked(r *room) {
	if r.older != nil {
		r.older.newer = r.newer
	} else {
		b.oldest = r.newer
	}
	if r.newer != nil {
		r.newer.older = r.older
	} else {
		b.newest = r.older
	}
	r.older, r.newer = nil, nil
}

func (b *Backend) linkNewestLocked(r *room) {
	r.older = b.newest
	if b.newest != nil {
		b.newest.newer = r
	} else {
		b.oldest = r
	}
	b.newest = r
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
	r, err := b.room(ctx, p.Room)
	if err != nil {
		return protocol.Message{}, err
	}
	defer b.mu.Unlock()
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
	b.accountLocked(r, messageBytes(msg))
	// Trimmed once it holds twice what is kept, not at every message: a
	// copy of the whole history per publish was most of the node's garbage.
	if size := b.opts.HistorySize; len(r.history) >= 2*size {
		for _, m := range r.history[:len(r.history)-size] {
			b.accountLocked(r, -messageBytes(m))
		}
		n := copy(r.history, r.history[len(r.history)-size:])
		clear(r.history[n:])
		r.history = r.history[:n]
	}
	b.boundLocked(r)
	if b.opts.Heads != nil {
		if _, ok := b.unstored[r.name]; !ok || r.claim != 0 {
			b.unstored[r.name] = now.Add(b.opts.StoreDelay)
		}
		r.claim = 0 // published after the claim: MarkStored keeps the room due
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
	r, err := b.room(ctx, name)
	if err != nil {
		return broker.History{}, err
	}
	defer b.mu.Unlock()
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
	if old, ok := b.conns[c.Client]; ok {
		b.uncountLocked(old.User)
	}
	b.conns[c.Client] = c
	b.userConns[c.User]++
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
	if c, ok := b.conns[client]; ok {
		b.uncountLocked(c.User)
		delete(b.conns, client)
	}
	for name := range b.clientRooms[client] {
		b.leaveLocked(name, client)
	}
}

func (b *Backend) uncountLocked(user string) {
	if b.userConns[user]--; b.userConns[user] <= 0 {
		delete(b.userConns, user)
	}
}

// presence is who is in a room: its connections, and its users with their
// connection counts, kept sorted for paging.
type presence struct {
	conns map[string]broker.Conn // by client id
	users map[string]int         // connections per user
	order []string               // the users, sorted; a change moves the string headers after it (160 KB at 10,000 users)
}

func (p *presence) add(c broker.Conn) (changed bool) {
	if _, ok := p.conns[c.Client]; ok {
		return false
	}
	p.conns[c.Client] = c
	if p.users[c.User]++; p.users[c.User] > 1 {
		return false
	}
	i, _ := slices.BinarySearch(p.order, c.User)
	p.order = slices.Insert(p.order, i, c.User)
	return true
}

func (p *presence) remove(client string) (changed bool) {
	c, ok := p.conns[client]
	if !ok {
		return false
	}
	delete(p.conns, client)
	if p.users[c.User]--; p.users[c.User] > 0 {
		return false
	}
	delete(p.users, c.User)
	if i, found := slices.BinarySearch(p.order, c.User); found {
		p.order = slices.Delete(p.order, i, i+1)
	}
	return true
}

func (n *node) Join(ctx context.Context, name string, c broker.Conn) (broker.RoomPresence, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.presence[name]
	if p == nil {
		p = &presence{conns: make(map[string]broker.Conn), users: make(map[string]int)}
		b.presence[name] = p
	}
	changed := p.add(c)
	rooms := b.clientRooms[c.Client]
	if rooms == nil {
		rooms = make(map[string]struct{})
		b.clientRooms[c.Client] = rooms
	}
	rooms[name] = struct{}{}
	return broker.RoomPresence{Count: len(p.order), Changed: changed}, ctx.Err()
}

func (n *node) Leave(ctx context.Context, name string, c broker.Conn) (broker.RoomPresence, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	changed := b.leaveLocked(name, c.Client)
	count := 0
	if p := b.presence[name]; p != nil {
		count = len(p.order)
	}
	return broker.RoomPresence{Count: count, Changed: changed}, ctx.Err()
}

// leaveLocked takes client out of room name and reports whether its user
// left the room with it.
func (b *Backend) leaveLocked(name, client string) bool {
	if rooms := b.clientRooms[client]; rooms != nil {
		delete(rooms, name)
		if len(rooms) == 0 {
			delete(b.clientRooms, client)
		}
	}
	p := b.presence[name]
	if p == nil {
		return false
	}
	changed := p.remove(client)
	if len(p.conns) == 0 {
		delete(b.presence, name)
	}
	return changed
}

func (n *node) Members(ctx context.Context, name string, q broker.MembersQuery) (broker.MembersPage, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.presence[name]
	if p == nil {
		return broker.MembersPage{Members: []protocol.Member{}}, ctx.Err()
	}
	users := p.order
	if q.After != "" {
		i, found := slices.BinarySearch(users, q.After)
		if found {
			i++
		}
		users = users[i:]
	}
	if q.Limit > 0 && len(users) > q.Limit {
		users = users[:q.Limit]
	}
	page := broker.MembersPage{Members: make([]protocol.Member, len(users)), Count: len(p.order)}
	for i, user := range users {
		page.Members[i] = protocol.Member{User: user, Connections: p.users[user]}
	}
	return page, ctx.Err()
}

func (n *node) Rooms(ctx context.Context) ([]broker.RoomInfo, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	rooms := make([]broker.RoomInfo, 0, len(b.presence))
	for name, p := range b.presence {
		var seq int64
		if r := b.rooms[name]; r != nil && b.now().Before(r.expires) {
			seq = r.seq
		}
		rooms = append(rooms, broker.RoomInfo{Room: name, Members: len(p.order), Seq: seq})
	}
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Room < rooms[j].Room })
	return rooms, ctx.Err()
}

func (n *node) UserConnections(ctx context.Context, user string) (int, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.userConns[user], ctx.Err()
}

func (n *node) Session(ctx context.Context, client string) (broker.Conn, bool, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.conns[client]
	return c, ok, ctx.Err()
}

func (n *node) Grant(ctx context.Context, room, user string) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.grants == nil {
		b.grants = make(map[string]map[string]struct{})
	}
	if b.grants[room] == nil {
		b.grants[room] = make(map[string]struct{})
	}
	b.grants[room][user] = struct{}{}
	return ctx.Err()
}

func (n *node) Revoke(ctx context.Context, room, user string) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.grants[room], user)
	if len(b.grants[room]) == 0 {
		delete(b.grants, room)
	}
	return ctx.Err()
}

func (n *node) Grants(ctx context.Context, room string) ([]string, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	users := make([]string, 0, len(b.grants[room]))
	for u := range b.grants[room] {
		users = append(users, u)
	}
	slices.Sort(users)
	return users, ctx.Err()
}

func (n *node) HasGrant(ctx context.Context, room, user string) (bool, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.grants[room][user]
	return ok, ctx.Err()
}

func (n *node) Nodes(ctx context.Context) ([]broker.NodeInfo, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []broker.NodeInfo
	for m := range b.nodes {
		if !m.closed {
			out = append(out, broker.NodeInfo{Node: m.id, Connections: len(m.conns), Started: m.started})
		}
	}
	slices.SortFunc(out, func(a, c broker.NodeInfo) int { return strings.Compare(a.Node, c.Node) })
	return out, ctx.Err()
}

func (n *node) Users(ctx context.Context) (int, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.userConns), ctx.Err()
}

func (n *node) ClaimUnstored(ctx context.Context, lease time.Duration, limit int) ([]broker.Unstored, error) {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var out []broker.Unstored
	for name, due := range b.unstored {
		if len(out) == limit {
			break
		}
		if due.After(now) {
			continue
		}
		b.claims++
		b.unstored[name] = now.Add(lease)
		u := broker.Unstored{Room: name, Claim: b.claims}
		if r := b.liveLocked(name); r != nil {
			r.claim = b.claims
			u.Epoch, u.Seq, u.Stored = r.epoch, r.seq, r.stored
		}
		out = append(out, u)
	}
	return out, ctx.Err()
}

func (n *node) MarkStored(ctx context.Context, u broker.Unstored) error {
	b := n.backend
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.liveLocked(u.Room)
	if r == nil {
		// The room's history is gone (expired, evicted): nothing is left
		// to store. A later publish marks it again.
		delete(b.unstored, u.Room)
		return ctx.Err()
	}
	if r.epoch == u.Epoch && u.Seq > r.stored {
		r.stored = u.Seq
	}
	if r.claim == u.Claim {
		r.claim = 0
		delete(b.unstored, u.Room)
	}
	return ctx.Err()
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

// Package hub fans events out to a node's connections. One goroutine, the
// Hub's loop, owns every client, room and membership; nothing else reads or
// changes them. The loop never blocks on a client (Enqueue does not block)
// and does no I/O: connections and the broker talk to it through channels.
package hub

import (
	"errors"
	"slices"
	"sync/atomic"

	"chat/internal/broker"
	"chat/internal/protocol"
)

// ErrStopped is returned by calls made after the Hub stopped.
var ErrStopped = errors.New("hub stopped")

// Hub is one node's fan-out. Start it with Run; all methods are safe for
// concurrent use.
type Hub struct {
	register   chan *Client
	unregister chan *Client
	joins      chan *JoinRequest
	leaves     chan leaveRequest
	deliveries chan broker.Delivery
	closeAll   chan CloseRequest
	presence   chan chan []PresenceChanges
	quit       chan struct{}
	done       chan struct{}

	// Owned by the loop.
	clients map[*Client]struct{}
	users   map[string][]*Client // a user's connections; Client.userAt is each one's place
	rooms   map[string]*room
	dirty   []*Client // clients with staged events

	// Where messages reached rooms that have no local member: the node is
	// subscribed before its first member's join reads history, and stays
	// subscribed a moment after its last member left, so a join can arrive
	// after deliveries it did not read. Without this record the Hub would
	// accept it as fresh and the member would miss those messages. Two
	// generations bound the memory: an entry outlives at least
	// idleGeneration newer ones, far longer than a join takes.
	idle, idleOld map[string]protocol.Position

	connections atomic.Int64
	roomCount   atomic.Int64
	delivered   atomic.Int64
	slow        atomic.Int64
}

// room is a room with local members.
type room struct {
	epoch   string
	lastSeq int64 // the last seq delivered to the room's members
	// members is walked for every message, so it is a slice (a map costs
	// several times as much to walk); index finds a member's place in it.
	members []member
	index   map[*Client]int
	// changes gathers a large room's joins and leaves (KindPresence) until
	// TakePresence hands them out: per user, +1 joined, -1 left, 0 both.
	changes map[string]int
	// recent holds the last messages delivered (at least recentMessages of
	// them, consecutive seqs up to lastSeq; empty after a gap), so that a
	// join whose history read is a few messages behind, as every join into
	// a busy room is, gets them from here instead of reading again.
	recent []recentMessage
}

// recentMessage is a delivered room message, as its members got it.
type recentMessage struct {
	seq     int64
	payload []byte
}

// recentMessages is how many delivered messages a room keeps for joins:
// a join reads history, then reaches the loop some milliseconds later;
// 32 messages cover that at hundreds of messages a second.
const recentMessages = 32

// remember keeps a delivered message for joins that read history before it.
func (r *room) remember(seq int64, payload []byte) {
	if n := len(r.recent); n > 0 && r.recent[n-1].seq != seq-1 {
		r.recent = r.recent[:0] // a gap: what is kept must be consecutive
	}
	r.recent = append(r.recent, recentMessage{seq, payload})
	if len(r.recent) >= 2*recentMessages { // trimmed now and then, not per message
		n := copy(r.recent, r.recent[len(r.recent)-recentMessages:])
		clear(r.recent[n:])
		r.recent = r.recent[:n]
	}
}

// since returns the delivered messages after seq, when the room still
// keeps every one of them.
func (r *room) since(seq int64) ([]recentMessage, bool) {
	n := len(r.recent)
	if n == 0 || r.recent[n-1].seq != r.lastSeq || r.recent[0].seq > seq+1 {
		return nil, false
	}
	return r.recent[seq+1-r.recent[0].seq:], true
}

// member is a client in a room and what its join reply covered: later
// messages are delivered to it.
type member struct {
	client            *Client
	protocol.Position // where the member is in the room's sequence
}

// set adds c at p, or moves it to p if it is a member.
func (r *room) set(c *Client, p protocol.Position) {
	if i, ok := r.index[c]; ok {
		r.members[i].Position = p
		return
	}
	r.index[c] = len(r.members)
	r.members = append(r.members, member{c, p})
}

// remove takes c out, moving the last member into its place.
func (r *room) remove(c *Client) {
	i, ok := r.index[c]
	if !ok {
		return
	}
	last := len(r.members) - 1
	r.members[i] = r.members[last]
	r.index[r.members[i].client] = i
	r.members[last] = member{}
	r.members = r.members[:last]
	delete(r.index, c)
}

// idleGeneration is how many memberless rooms one generation of Hub.idle
// holds before it becomes Hub.idleOld.
const idleGeneration = 1024

// New makes a Hub; deliveryBuffer bounds the deliveries waiting for the
// loop (the broker waits, not the loop, when it is full).
func New(deliveryBuffer int) *Hub {
	return &Hub{
		register:   make(chan *Client),
		unregister: make(chan *Client, 64),
		joins:      make(chan *JoinRequest),
		leaves:     make(chan leaveRequest),
		deliveries: make(chan broker.Delivery, deliveryBuffer),
		closeAll:   make(chan CloseRequest),
		presence:   make(chan chan []PresenceChanges),
		quit:       make(chan struct{}),
		done:       make(chan struct{}),
		clients:    make(map[*Client]struct{}),
		users:      make(map[string][]*Client),
		rooms:      make(map[string]*room),
		idle:       make(map[string]protocol.Position),
	}
}

// JoinRequest adds a client to a room. The caller read the room's history
// up to (Epoch, Seq) after the node subscribed to the room, and encoded the
// join reply (Reply) from it. The Hub queues Reply to the client and from
// then on delivers every message after Seq, so the member sees each message
// once: in the reply or as an event.
type JoinRequest struct {
	Client *Client
	Room   string
	Epoch  string
	Seq    int64
	Reply  []byte
	result chan JoinResult
}

// JoinResult says whether a join took effect.
type JoinResult struct {
	// Stale: the Hub already delivered messages after Seq to the room, so
	// the reply would miss them; read history again and retry. LastSeq is
	// what the Hub delivered.
	Stale   bool
	LastSeq int64
}

type leaveRequest struct {
	client *Client
	room   string
	reply  []byte
	done   chan struct{}
}

// handle applies a delivery in the loop.
func (h *Hub) handle(d broker.Delivery) {
	if d.Kind == broker.KindKick {
		h.flush() // what the kicked user was sent before goes first
	}
	h.deliver(d)
}

// Run is the Hub's loop. It returns when Stop is called.
func (h *Hub) Run() {
	defer close(h.done)
	handled := 0
	for {
		select {
		case c := <-h.register:
			h.addClient(c)
		case c := <-h.unregister:
			h.removeClient(c)
		case req := <-h.joins:
			res := h.join(req)
			h.flush() // the reply is queued before the caller goes on
			req.result <- res
		case req := <-h.leaves:
			h.leave(req)
			h.flush()
			close(req.done)
		case d := <-h.deliveries:
			h.handle(d)
		case req := <-h.closeAll:
			// Deliveries handed over before the close was asked for are
			// "what is queued": select would otherwise pick either.
			for range len(h.deliveries) {
				h.handle(<-h.deliveries)
			}
			h.flush()
			for c := range h.clients {
				c.Close(req)
			}
		case out := <-h.presence:
			out <- h.takePresence()
		case <-h.quit:
			h.flush()
			return
		}
		if handled++; len(h.deliveries) == 0 || handled >= flushEvery {
			h.flush()
			handled = 0
		}
	}
}

// Stop ends the loop and waits for it.
func (h *Hub) Stop() {
	select {
	case <-h.quit:
	default:
		close(h.quit)
	}
	<-h.done
}

// Register adds a connection's client.
func (h *Hub) Register(c *Client) error {
	c.slow = &h.slow
	select {
	case h.register <- c:
		return nil
	case <-h.done:
		return ErrStopped
	}
}

// Unregister removes a client from the Hub and every room.
func (h *Hub) Unregister(c *Client) {
	select {
	case h.unregister <- c:
	case <-h.done:
	}
}

// Join adds a client to a room (see JoinRequest).
func (h *Hub) Join(req JoinRequest) (JoinResult, error) {
	req.result = make(chan JoinResult, 1)
	select {
	case h.joins <- &req:
		return <-req.result, nil
	case <-h.done:
		return JoinResult{}, ErrStopped
	}
}

// Leave removes a client from a room and then queues reply (if any) to it,
// so that no event of the room follows the reply.
func (h *Hub) Leave(c *Client, room string, reply []byte) error {
	req := leaveRequest{client: c, room: room, reply: reply, done: make(chan struct{})}
	select {
	case h.leaves <- req:
		<-req.done
		return nil
	case <-h.done:
		return ErrStopped
	}
}

// Deliver hands the Hub something from the broker. It is the broker's
// Handler: it waits while the Hub's delivery buffer is full.
func (h *Hub) Deliver(d broker.Delivery) {
	select {
	case h.deliveries <- d:
	case <-h.done:
	}
}

// PresenceChanges are the users that joined and left a large room since
// the last TakePresence, as this node heard of them (KindPresence), net of
// each other: a user who joined and left in between is in neither.
type PresenceChanges struct {
	Room         string
	Joined, Left []string // sorted
}

// TakePresence hands out, and forgets, the presence changes of every room
// with local members that has any. The node turns them into "presence"
// events (it reads the count from the broker, which the Hub must not call).
func (h *Hub) TakePresence() []PresenceChanges {
	out := make(chan []PresenceChanges, 1)
	select {
	case h.presence <- out:
		return <-out
	case <-h.done:
		return nil
	}
}

func (h *Hub) takePresence() []PresenceChanges {
	var all []PresenceChanges
	for name, r := range h.rooms {
		if len(r.changes) == 0 {
			continue
		}
		pc := PresenceChanges{Room: name}
		for user, n := range r.changes {
			switch {
			case n > 0:
				pc.Joined = append(pc.Joined, user)
			case n < 0:
				pc.Left = append(pc.Left, user)
			}
		}
		slices.Sort(pc.Joined)
		slices.Sort(pc.Left)
		r.changes = nil
		all = append(all, pc)
	}
	return all
}

// CloseAll asks every client to close (shutdown: 1001 after a flush).
func (h *Hub) CloseAll(req CloseRequest) {
	select {
	case h.closeAll <- req:
	case <-h.done:
	}
}

// Stats are counters of this node's Hub.
type Stats struct {
	Connections, Rooms, Delivered, SlowConsumers int64
}

// Stats reads the counters without going through the loop.
func (h *Hub) Stats() Stats {
	return Stats{
		Connections:   h.connections.Load(),
		Rooms:         h.roomCount.Load(),
		Delivered:     h.delivered.Load(),
		SlowConsumers: h.slow.Load(),
	}
}

// Running reports whether the loop runs.
func (h *Hub) Running() bool {
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

func (h *Hub) addClient(c *Client) {
	h.clients[c] = struct{}{}
	c.userAt = len(h.users[c.User])
	h.users[c.User] = append(h.users[c.User], c)
	h.connections.Store(int64(len(h.clients)))
}

func (h *Hub) removeClient(c *Client) {
	if _, ok := h.clients[c]; !ok {
		return
	}
	delete(h.clients, c)
	h.removeUserConn(c)
	for name := range c.rooms {
		if r := h.rooms[name]; r != nil {
			h.removeMember(name, r, c)
		}
	}
	h.connections.Store(int64(len(h.clients)))
}

// removeUserConn takes c out of its user's connections in O(1), moving
// the last one into its place (SPEC §11: no per-user step may grow with
// the user's connection count).
func (h *Hub) removeUserConn(c *Client) {
	conns := h.users[c.User]
	last := len(conns) - 1
	if last == 0 {
		delete(h.users, c.User)
		return
	}
	conns[c.userAt] = conns[last]
	conns[c.userAt].userAt = c.userAt
	conns[last] = nil
	h.users[c.User] = conns[:last]
}

func (h *Hub) removeMember(name string, r *room, c *Client) {
	r.remove(c)
	delete(c.rooms, name)
	if len(r.members) == 0 {
		delete(h.rooms, name)
		h.roomCount.Store(int64(len(h.rooms)))
		h.noteIdle(name, protocol.Position{Epoch: r.epoch, Seq: r.lastSeq})
	}
}

// noteIdle records that the Hub handed out p of a room without members.
func (h *Hub) noteIdle(name string, p protocol.Position) {
	if old, ok := h.idlePosition(name); ok && old.Epoch == p.Epoch && old.Seq >= p.Seq {
		return
	}
	if len(h.idle) >= idleGeneration {
		h.idleOld, h.idle = h.idle, make(map[string]protocol.Position)
	}
	h.idle[name] = p
}

func (h *Hub) idlePosition(name string) (protocol.Position, bool) {
	if p, ok := h.idle[name]; ok {
		return p, true
	}
	p, ok := h.idleOld[name]
	return p, ok
}

func (h *Hub) join(req *JoinRequest) JoinResult {
	r := h.rooms[req.Room]
	if r == nil {
		r = &room{epoch: req.Epoch, lastSeq: req.Seq, index: make(map[*Client]int)}
		if p, ok := h.idlePosition(req.Room); ok && (p.Epoch != req.Epoch || p.Seq > req.Seq) {
			r.epoch, r.lastSeq = p.Epoch, p.Seq
		}
	}
	var missed []recentMessage
	if r.epoch == req.Epoch && req.Seq < r.lastSeq {
		var ok bool
		if missed, ok = r.since(req.Seq); !ok {
			return JoinResult{Stale: true, LastSeq: r.lastSeq}
		}
	}
	if len(r.members) == 0 {
		h.rooms[req.Room] = r
		h.roomCount.Store(int64(len(h.rooms)))
		delete(h.idle, req.Room)
		delete(h.idleOld, req.Room)
	}
	at := req.Seq
	if len(missed) > 0 {
		at = r.lastSeq // the missed messages follow the reply
	}
	r.set(req.Client, protocol.Position{Epoch: req.Epoch, Seq: at})
	if req.Client.rooms == nil {
		req.Client.rooms = make(map[string]struct{})
	}
	req.Client.rooms[req.Room] = struct{}{}
	h.sendReply(req.Client, req.Reply)
	for _, m := range missed { // after the reply, as if they had come after it
		h.send(req.Client, m.payload)
	}
	return JoinResult{LastSeq: r.lastSeq}
}

func (h *Hub) leave(req leaveRequest) {
	if r := h.rooms[req.room]; r != nil {
		if _, ok := r.index[req.client]; ok {
			h.removeMember(req.room, r, req.client)
		}
	}
	if req.reply != nil {
		h.sendReply(req.client, req.reply)
	}
}

// send stages an event for a client. Staged events reach the client's
// queue in one locked step per client when the loop has no more deliveries
// waiting (flush): under load a message to a thousand members then costs a
// thousand appends, not a thousand lock round trips.
func (h *Hub) send(c *Client, event []byte) {
	c.staged = append(c.staged, event)
	if !c.dirty {
		c.dirty = true
		h.dirty = append(h.dirty, c)
	}
}

// sendReply stages a join or leave reply, which the client waits for.
func (h *Hub) sendReply(c *Client, reply []byte) {
	h.send(c, reply)
	c.stagedUrgent = true
}

// flush hands every staged event to its client's queue.
func (h *Hub) flush() {
	for i, c := range h.dirty {
		n := c.enqueue(c.staged, c.stagedUrgent)
		h.delivered.Add(int64(n))
		clear(c.staged)
		c.staged, c.stagedUrgent, c.dirty = keptSlice(c.staged, len(c.staged)), false, false
		h.dirty[i] = nil
	}
	h.dirty = h.dirty[:0]
}

// flushEvery bounds how many deliveries the loop handles before it flushes
// even though more are waiting, which bounds the latency staging adds.
const flushEvery = 64

func (h *Hub) deliver(d broker.Delivery) {
	switch d.Kind {
	case broker.KindMessage:
		h.deliverMessage(d)
	case broker.KindEvent:
		switch d.Topic.Kind {
		case broker.TopicRoom:
			if r := h.rooms[d.Topic.Name]; r != nil {
				for _, m := range r.members {
					if m.client.ID != d.Exclude {
						h.send(m.client, d.Payload)
					}
				}
			}
		case broker.TopicUser:
			for _, c := range h.users[d.Topic.Name] {
				if c.ID != d.Exclude {
					h.send(c, d.Payload)
				}
			}
		case broker.TopicBroadcast:
			for c := range h.clients {
				if c.ID != d.Exclude {
					h.send(c, d.Payload)
				}
			}
		}
	case broker.KindResync:
		r := h.rooms[d.Topic.Name]
		if r == nil {
			h.noteIdle(d.Topic.Name, protocol.Position{Epoch: d.Message.Epoch, Seq: d.Message.Seq})
		}
		if r != nil && r.epoch == d.Message.Epoch {
			if d.Message.Seq > r.lastSeq {
				r.lastSeq = d.Message.Seq
				r.recent = r.recent[:0] // the messages up to it were lost
			}
			for _, m := range r.members {
				h.send(m.client, d.Payload)
			}
		}
	case broker.KindPresence:
		if r := h.rooms[d.Topic.Name]; r != nil {
			if r.changes == nil {
				r.changes = make(map[string]int)
			}
			// A join and a leave cancel out; repeats of one (the user's
			// connections on several nodes) do not add up.
			if d.Joined {
				r.changes[d.User] = min(r.changes[d.User]+1, 1)
			} else {
				r.changes[d.User] = max(r.changes[d.User]-1, -1)
			}
		}
	case broker.KindKick:
		for _, c := range h.users[d.Topic.Name] {
			c.Close(CloseRequest{Code: protocol.CloseKicked, Text: "kicked"})
		}
	}
}

// deliverMessage sends a room message to the room's members in seq order,
// each once. The payload was encoded once for all of them.
func (h *Hub) deliverMessage(d broker.Delivery) {
	m := d.Message
	r := h.rooms[d.Topic.Name]
	if r == nil {
		h.noteIdle(d.Topic.Name, protocol.Position{Epoch: m.Epoch, Seq: m.Seq})
		return
	}
	if m.Epoch != r.epoch {
		r.epoch, r.lastSeq = m.Epoch, 0 // the room's sequence restarted (its history was lost)
		r.recent = r.recent[:0]
	}
	if m.Seq <= r.lastSeq {
		return // already delivered
	}
	r.lastSeq = m.Seq
	r.remember(m.Seq, d.Payload)
	var resync []byte
	for i := range r.members {
		member := &r.members[i]
		if member.Epoch != m.Epoch {
			// The member's reply belongs to another sequence: it cannot
			// continue from its seq and must join again. Until it does,
			// it gets the new sequence from here on.
			if resync == nil {
				resync = protocol.MustEncode(protocol.Resync{Type: "resync", Room: m.Room, Epoch: m.Epoch, Seq: m.Seq})
			}
			h.send(member.client, resync)
			member.Position = protocol.Position{Epoch: m.Epoch}
		}
		if m.Seq > member.Seq {
			h.send(member.client, d.Payload)
		}
	}
}

package chat

import (
	"context"
	"encoding/json"
	"time"
	"unicode/utf8"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"
)

type joinResult struct {
	Room      string             `json:"room"`
	Epoch     string             `json:"epoch"`
	Seq       int64              `json:"seq"`
	Members   []protocol.Member  `json:"members"` // the first page (all of a room within Chat.PresenceEventLimit)
	Count     int                `json:"count"`   // users present, all pages
	History   []protocol.Message `json:"history"`
	Recovered bool               `json:"recovered"`
}

type roomResult struct {
	Room string `json:"room"`
}

type sendResult struct {
	Room string `json:"room"`
	Seq  int64  `json:"seq"`
	TS   int64  `json:"ts"`
}

type directResult struct {
	To string `json:"to"`
	TS int64  `json:"ts"`
}

type historyResult struct {
	Room     string             `json:"room"`
	Messages []protocol.Message `json:"messages"`
}

type membersResult struct {
	Room    string            `json:"room"`
	Members []protocol.Member `json:"members"`
	Count   int               `json:"count"`
}

type roomCount struct {
	Room    string `json:"room"`
	Members int    `json:"members"`
}

type roomsResult struct {
	Rooms []roomCount `json:"rooms"`
}

// handleCommand parses, rate-limits and runs one command and answers it: a
// reply when it has an id, an error event when it failed without one.
func (c *Conn) handleCommand(line []byte) {
	cmd, perr := protocol.DecodeCommand(line)
	if perr != nil {
		c.answer(cmd.ID, nil, perr)
		return
	}
	if !c.limiter.allow(time.Now()) {
		c.answer(cmd.ID, nil, protocol.Errorf(protocol.CodeRateLimited, "over %g commands per second; command dropped", c.node.cfg.RateLimit))
		return
	}
	ctx, cancel := brokerContext(context.Background())
	defer cancel()
	var (
		result any
		err    error
	)
	switch cmd.Type {
	case "join":
		if err = c.join(ctx, &cmd); err == nil {
			return // the Hub queued the reply
		}
	case "leave":
		if err = c.leave(ctx, &cmd); err == nil {
			return // the Hub queued the reply
		}
	case "send":
		result, err = c.send(ctx, &cmd)
	case "direct":
		result, err = c.direct(ctx, &cmd)
	case "typing":
		result, err = c.typing(ctx, &cmd)
	case "history":
		var msgs []protocol.Message
		msgs, err = c.node.History(ctx, cmd.Room, cmd.Before, cmd.Limit)
		result = historyResult{Room: cmd.Room, Messages: msgs}
	case "members":
		var page broker.MembersPage
		page, err = c.node.Members(ctx, cmd.Room, cmd.After, cmd.Limit)
		result = membersResult{Room: cmd.Room, Members: page.Members, Count: page.Count}
	case "rooms":
		result, err = c.roomList(ctx)
	case "":
		err = protocol.Errorf(protocol.CodeBadRequest, "type is required")
	default:
		err = protocol.Errorf(protocol.CodeUnknownType, "unknown command type %q", cmd.Type)
	}
	c.answer(cmd.ID, result, err)
}

// encodeReply encodes the answer to a command: nil when there is nothing to
// send (a success without id).
func encodeReply(id json.RawMessage, result any, err error) []byte {
	if err != nil {
		pe := protocol.AsError(err)
		if id == nil {
			return protocol.MustEncode(protocol.ErrorEvent{Type: "error", Error: pe})
		}
		return protocol.MustEncode(protocol.Reply{Type: "reply", ID: id, Err: pe})
	}
	if id == nil {
		return nil
	}
	if result == nil {
		result = struct{}{}
	}
	return protocol.MustEncode(protocol.Reply{Type: "reply", ID: id, Result: result})
}

func (c *Conn) answer(id json.RawMessage, result any, err error) {
	if reply := encodeReply(id, result, err); reply != nil {
		c.client.EnqueueReply(reply)
	}
}

func (c *Conn) memberOf(room string) error {
	if err := protocol.CheckRoom(room); err != nil {
		return err
	}
	if _, ok := c.rooms[room]; !ok {
		return protocol.Errorf(protocol.CodeNotMember, "join %s first", room)
	}
	return nil
}

// join adds the connection to a room. The node subscribes to the room
// before reading its history, so nothing published after the read is
// missed; the Hub then delivers only what the reply did not hold.
func (c *Conn) join(ctx context.Context, cmd *protocol.Command) error {
	room := cmd.Room
	if err := protocol.CheckRoom(room); err != nil {
		return err
	}
	_, member := c.rooms[room]
	if !member && len(c.rooms) >= c.node.cfg.MaxRooms {
		return protocol.Errorf(protocol.CodeTooManyRooms, "a connection may be in at most %d rooms", c.node.cfg.MaxRooms)
	}
	n := c.node
	var presence broker.RoomPresence
	if !member {
		if err := n.subs.acquire(ctx, broker.Room(room)); err != nil {
			return brokerError("subscribe "+room, err)
		}
		var err error
		if presence, err = n.broker.Join(ctx, room, c.presence); err != nil {
			_ = n.subs.release(ctx, broker.Room(room))
			return brokerError("join "+room, err)
		}
	}
	// The reply lists a room within Chat.PresenceEventLimit whole, and
	// only the first page of a larger one: 10,000 joins of 500 names each
	// would be 200 MB of replies.
	page := n.membersPage()
	if n.largeRoom(presence.Count) {
		page = largeRoomJoinPage
	}
	if err := c.joinHub(ctx, cmd, page); err != nil {
		if !member {
			_, _ = n.broker.Leave(ctx, room, c.presence)
			_ = n.subs.release(ctx, broker.Room(room))
		}
		return err
	}
	if !member {
		if c.rooms == nil { // made on the first join: many connections never join
			c.rooms = make(map[string]struct{})
		}
		c.rooms[room] = struct{}{}
		c.announce(ctx, room, presence, true)
	}
	return nil
}

// joinHub reads the history and hands the reply to the Hub, again if the Hub
// delivered messages newer than the read in the meantime.
func (c *Conn) joinHub(ctx context.Context, cmd *protocol.Command, membersPage int) error {
	n := c.node
	for attempt := 0; ; attempt++ {
		h, err := n.broker.History(ctx, cmd.Room, broker.HistoryQuery{})
		if err != nil {
			return brokerError("history of "+cmd.Room, err)
		}
		page, err := n.broker.Members(ctx, cmd.Room, broker.MembersQuery{Limit: membersPage})
		if err != nil {
			return brokerError("members of "+cmd.Room, err)
		}
		res := joinResult{Room: cmd.Room, Epoch: h.Epoch, Seq: h.Seq, Members: nonNil(page.Members), Count: page.Count}
		res.History, res.Recovered = recoverSince(cmd.Since, h)
		reply := encodeReply(cmd.ID, res, nil)
		r, err := n.hub.Join(hub.JoinRequest{Client: c.client, Room: cmd.Room, Epoch: h.Epoch, Seq: h.Seq, Reply: reply})
		if err != nil {
			return protocol.Errorf(protocol.CodeUnavailable, "server shutting down")
		}
		if !r.Stale {
			return nil
		}
		if attempt == 10 {
			return protocol.Errorf(protocol.CodeUnavailable, "room %s is too busy to join; try again", cmd.Room)
		}
	}
}

// recoverSince picks the join reply's history: exactly the messages after
// since when they are all still kept in the same epoch, else the latest.
func recoverSince(since *protocol.Position, h broker.History) ([]protocol.Message, bool) {
	if since != nil && since.Epoch == h.Epoch && since.Seq >= 0 && since.Seq <= h.Seq {
		var missed []protocol.Message
		for _, m := range h.Messages {
			if m.Seq > since.Seq {
				missed = append(missed, m)
			}
		}
		if since.Seq == h.Seq || (len(missed) > 0 && missed[0].Seq == since.Seq+1) {
			return nonNil(missed), true
		}
	}
	latest := h.Messages
	if len(latest) > defaultHistory {
		latest = latest[len(latest)-defaultHistory:]
	}
	return nonNil(latest), false
}

func (c *Conn) leave(ctx context.Context, cmd *protocol.Command) error {
	if err := c.memberOf(cmd.Room); err != nil {
		return err
	}
	if err := c.node.hub.Leave(c.client, cmd.Room, encodeReply(cmd.ID, roomResult{Room: cmd.Room}, nil)); err != nil {
		return protocol.Errorf(protocol.CodeUnavailable, "server shutting down")
	}
	c.leaveRoom(ctx, cmd.Room)
	return nil
}

// leaveRoom removes the connection's presence in a room and tells the
// members; the Hub membership is already gone.
func (c *Conn) leaveRoom(ctx context.Context, room string) {
	delete(c.rooms, room)
	n := c.node
	presence, err := n.broker.Leave(ctx, room, c.presence)
	if err != nil {
		_ = brokerError("leave "+room, err)
	}
	c.announce(ctx, room, presence, false)
	if err := n.subs.release(ctx, broker.Room(room)); err != nil {
		_ = brokerError("unsubscribe "+room, err)
	}
}

// announce tells a room's members that this connection joined or left
// (p: the room's presence right after). A room of at most
// Chat.PresenceEventLimit members hears of every connection, a joined or
// left event to each member: O(N) events per join, O(N^2) for a room
// filling up. A larger room hears only of its users' comings and goings,
// which every node with members gathers into a presence event per
// Chat.PresenceInterval (Node.presenceLoop). The room's size is counted
// with this user in it, so that the join that takes a room over the limit
// and the leave that brings it back are both on the large side.
func (c *Conn) announce(ctx context.Context, room string, p broker.RoomPresence, joined bool) {
	size := p.Count
	if !joined && p.Changed {
		size++
	}
	if !c.node.largeRoom(size) {
		kind := "left"
		if joined {
			kind = "joined"
		}
		c.emitPresence(ctx, kind, room)
		return
	}
	if !p.Changed {
		return // the user was there before and stays: nothing to tell
	}
	d := broker.Delivery{Kind: broker.KindPresence, Topic: broker.Room(room), User: c.client.User, Joined: joined}
	if err := c.node.broker.Emit(ctx, d); err != nil {
		_ = brokerError("presence in "+room, err)
	}
}

// emitPresence tells a room's members that this connection joined or left.
func (c *Conn) emitPresence(ctx context.Context, kind, room string) {
	event := protocol.MustEncode(protocol.Presence{Type: kind, Room: room, User: c.client.User, Client: c.client.ID})
	if err := c.node.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room(room), Payload: event}); err != nil {
		_ = brokerError(kind+" "+room, err)
	}
}

func (c *Conn) send(ctx context.Context, cmd *protocol.Command) (any, error) {
	if err := c.memberOf(cmd.Room); err != nil {
		return nil, err
	}
	if n := utf8.RuneCountInString(cmd.Key); cmd.Key != "" && n > protocol.MaxKeyChars {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "key must be 1 to %d characters", protocol.MaxKeyChars)
	}
	msg, err := c.node.Publish(ctx, cmd.Room, c.client.User, cmd.Text, cmd.Key)
	if err != nil {
		return nil, err
	}
	return sendResult{Room: msg.Room, Seq: msg.Seq, TS: msg.TS}, nil
}

func (c *Conn) direct(ctx context.Context, cmd *protocol.Command) (any, error) {
	to, err := protocol.NormalizeName(cmd.To)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "to: %s", protocol.AsError(err).Message)
	}
	d, _, err := c.node.Direct(ctx, c.client.User, to, cmd.Text, c.client.ID)
	if err != nil {
		return nil, err
	}
	return directResult{To: to, TS: d.TS}, nil
}

func (c *Conn) typing(ctx context.Context, cmd *protocol.Command) (any, error) {
	if err := c.memberOf(cmd.Room); err != nil {
		return nil, err
	}
	event := protocol.MustEncode(protocol.Typing{Type: "typing", Room: cmd.Room, User: c.client.User})
	err := c.node.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room(cmd.Room), Payload: event, Exclude: c.client.ID})
	return struct{}{}, brokerError("typing in "+cmd.Room, err)
}

func (c *Conn) roomList(ctx context.Context) (any, error) {
	rooms, err := c.node.Rooms(ctx)
	if err != nil {
		return nil, err
	}
	res := roomsResult{Rooms: make([]roomCount, len(rooms))}
	for i, r := range rooms {
		res.Rooms[i] = roomCount{Room: r.Room, Members: r.Members}
	}
	return res, nil
}

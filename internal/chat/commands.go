package chat

import (
	"context"
	"encoding/json"
	"time"
	"unicode/utf8"

	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/core/logx"
)

// handleCommand parses, rate-limits and runs one command and answers it: a
// reply when it has an id, an error event when it failed without one.
func (s *Session) handleCommand(line []byte) {
	cmd, perr := protocol.DecodeCommand(line)
	if perr != nil {
		s.answer(cmd.ID, nil, perr)
		return
	}
	if !s.limiter.allow(time.Now()) {
		s.answer(cmd.ID, nil, protocol.Errorf(protocol.CodeRateLimited, "over %g commands per second; command dropped", s.node.cfg.RateLimit))
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
		if err = s.join(ctx, &cmd); err == nil {
			return // the Hub queued the reply
		}
	case "leave":
		if err = s.leave(ctx, &cmd); err == nil {
			return // the Hub queued the reply
		}
	case "send":
		result, err = s.send(ctx, &cmd)
	case "direct":
		result, err = s.direct(ctx, &cmd)
	case "typing":
		result, err = s.typing(ctx, &cmd)
	case "history":
		if err = s.access(ctx, cmd.Room); err == nil {
			var msgs []protocol.Message
			msgs, err = s.node.History(ctx, cmd.Room, cmd.Before, cmd.Limit)
			result = protocol.HistoryResult{Room: cmd.Room, Messages: msgs}
		}
	case "members":
		if err = s.access(ctx, cmd.Room); err == nil {
			var page broker.MembersPage
			page, err = s.node.Members(ctx, cmd.Room, cmd.After, cmd.Limit)
			result = protocol.MembersResult{Room: cmd.Room, Members: page.Members, Count: page.Count}
		}
	case "rooms":
		result, err = s.roomList(ctx)
	case "":
		err = protocol.Errorf(protocol.CodeBadRequest, "type is required")
	default:
		err = protocol.Errorf(protocol.CodeUnknownType, "unknown command type %q", cmd.Type)
	}
	s.answer(cmd.ID, result, err)
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

func (s *Session) answer(id json.RawMessage, result any, err error) {
	if reply := encodeReply(id, result, err); reply != nil {
		s.client.EnqueueReply(reply)
	}
}

// access checks that the session's user may use room (SPEC §13): at every
// command, so that a revoked grant takes effect at once.
func (s *Session) access(ctx context.Context, room string) error {
	if err := protocol.CheckRoom(room); err != nil {
		return err
	}
	return s.node.Access(ctx, room, s.client.User, s.tokenRooms)
}

func (s *Session) memberOf(room string) error {
	if err := protocol.CheckRoom(room); err != nil {
		return err
	}
	if _, ok := s.rooms[room]; !ok {
		return protocol.Errorf(protocol.CodeNotMember, "join %s first", room)
	}
	return nil
}

// join adds the connection to a room. The node subscribes to the room
// before reading its history, so nothing published after the read is
// missed; the Hub then delivers only what the reply did not hold.
func (s *Session) join(ctx context.Context, cmd *protocol.Command) error {
	return s.joinAs(ctx, cmd, joinReply)
}

// joinReply answers a join command.
func joinReply(cmd *protocol.Command, res protocol.JoinResult) []byte {
	return encodeReply(cmd.ID, res, nil)
}

// joinAs joins as join does, telling the connection with what answer
// encodes (a reply to its command, or the admin API's subscribed event).
func (s *Session) joinAs(ctx context.Context, cmd *protocol.Command, answer func(*protocol.Command, protocol.JoinResult) []byte) error {
	room := cmd.Room
	if err := s.access(ctx, room); err != nil {
		return err
	}
	_, member := s.rooms[room]
	if !member && len(s.rooms) >= s.node.cfg.MaxRooms {
		return protocol.Errorf(protocol.CodeTooManyRooms, "a connection may be in at most %d rooms", s.node.cfg.MaxRooms)
	}
	n := s.node
	var presence broker.RoomPresence
	if !member {
		if err := n.subs.acquire(ctx, broker.Room(room)); err != nil {
			return brokerError("subscribe "+room, err)
		}
		var err error
		if presence, err = n.broker.Join(ctx, room, s.presence); err != nil {
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
	if err := s.joinHub(ctx, cmd, page, answer); err != nil {
		if !member {
			_, _ = n.broker.Leave(ctx, room, s.presence)
			_ = n.subs.release(ctx, broker.Room(room))
		}
		return err
	}
	if !member {
		if s.rooms == nil { // made on the first join: many connections never join
			s.rooms = make(map[string]struct{})
		}
		s.rooms[room] = struct{}{}
		s.announce(ctx, room, presence, true)
	}
	return nil
}

// joinHub reads the history and hands the reply to the Hub, again if the Hub
// delivered messages newer than the read in the meantime.
func (s *Session) joinHub(ctx context.Context, cmd *protocol.Command, membersPage int, answer func(*protocol.Command, protocol.JoinResult) []byte) error {
	n := s.node
	for attempt := 0; ; attempt++ {
		h, err := n.broker.History(ctx, cmd.Room, broker.HistoryQuery{})
		if err != nil {
			return brokerError("history of "+cmd.Room, err)
		}
		n.withStored(ctx, cmd.Room, cmd.Since, &h)
		page, err := n.broker.Members(ctx, cmd.Room, broker.MembersQuery{Limit: membersPage})
		if err != nil {
			return brokerError("members of "+cmd.Room, err)
		}
		res := protocol.JoinResult{Room: cmd.Room, Epoch: h.Epoch, Seq: h.Seq, Members: nonNil(page.Members), Count: page.Count}
		res.History, res.Recovered = recoverSince(cmd.Since, h)
		reply := answer(cmd, res)
		r, err := n.hub.Join(hub.JoinRequest{Client: s.client, Room: cmd.Room, Epoch: h.Epoch, Seq: h.Seq, Reply: reply})
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

// withStored completes a join's history from the store where the broker's
// window falls short (SPEC §14): back to since when it is in the same epoch
// and within a recovery's reach (so that the client recovers, after Redis
// lost the room, say), else to the latest page. A store that fails leaves
// the broker's window: the join still works, and a client that cannot
// recover from it is told so (recovered: false).
func (n *Node) withStored(ctx context.Context, room string, since *protocol.Position, h *broker.History) {
	if n.archive == nil {
		return
	}
	after, want := int64(0), defaultHistory
	if reach := n.recoveryReach(); since != nil && since.Epoch == h.Epoch && since.Seq >= 0 && h.Seq-since.Seq <= int64(reach) {
		after, want = since.Seq, reach
	}
	if err := n.archive.older(ctx, room, h, after, 0, want); err != nil {
		logx.Errorf("join %s: %v", room, err)
	}
}

// recoveryReach is how many missed messages a join recovers at most: what
// the broker keeps (Chat.HistorySize), which a store must not shrink.
func (n *Node) recoveryReach() int { return max(n.cfg.HistorySize, defaultHistory) }

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

func (s *Session) leave(ctx context.Context, cmd *protocol.Command) error {
	if err := s.memberOf(cmd.Room); err != nil {
		return err
	}
	if err := s.node.hub.Leave(s.client, cmd.Room, encodeReply(cmd.ID, protocol.RoomResult{Room: cmd.Room}, nil)); err != nil {
		return protocol.Errorf(protocol.CodeUnavailable, "server shutting down")
	}
	s.leaveRoom(ctx, cmd.Room)
	return nil
}

// leaveRoom removes the connection's presence in a room and tells the
// members; the Hub membership is already gone.
func (s *Session) leaveRoom(ctx context.Context, room string) {
	delete(s.rooms, room)
	n := s.node
	presence, err := n.broker.Leave(ctx, room, s.presence)
	if err != nil {
		_ = brokerError("leave "+room, err)
	}
	s.announce(ctx, room, presence, false)
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
func (s *Session) announce(ctx context.Context, room string, p broker.RoomPresence, joined bool) {
	size := p.Count
	if !joined && p.Changed {
		size++
	}
	if !s.node.largeRoom(size) {
		kind := "left"
		if joined {
			kind = "joined"
		}
		s.emitPresence(ctx, kind, room)
		return
	}
	if !p.Changed {
		return // the user was there before and stays: nothing to tell
	}
	d := broker.Delivery{Kind: broker.KindPresence, Topic: broker.Room(room), User: s.client.User, Joined: joined}
	if err := s.node.broker.Emit(ctx, d); err != nil {
		_ = brokerError("presence in "+room, err)
	}
}

// emitPresence tells a room's members that this connection joined or left.
func (s *Session) emitPresence(ctx context.Context, kind, room string) {
	event := protocol.MustEncode(protocol.Presence{Type: kind, Room: room, User: s.client.User, Client: s.client.ID})
	if err := s.node.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room(room), Payload: event}); err != nil {
		_ = brokerError(kind+" "+room, err)
	}
}

func (s *Session) send(ctx context.Context, cmd *protocol.Command) (any, error) {
	if err := s.memberOf(cmd.Room); err != nil {
		return nil, err
	}
	if err := s.node.Access(ctx, cmd.Room, s.client.User, s.tokenRooms); err != nil { // a revoke takes effect at once
		return nil, err
	}
	if n := utf8.RuneCountInString(cmd.Key); cmd.Key != "" && n > protocol.MaxKeyChars {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "key must be 1 to %d characters", protocol.MaxKeyChars)
	}
	msg, err := s.node.Publish(ctx, cmd.Room, s.client.User, cmd.Text, cmd.Key)
	if err != nil {
		return nil, err
	}
	return protocol.SendResult{Room: msg.Room, Seq: msg.Seq, TS: msg.TS}, nil
}

func (s *Session) direct(ctx context.Context, cmd *protocol.Command) (any, error) {
	to, err := protocol.NormalizeName(cmd.To)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeBadRequest, "to: %s", protocol.AsError(err).Message)
	}
	d, online, err := s.node.Direct(ctx, s.client.User, to, cmd.Text, s.client.ID)
	if err != nil {
		return nil, err
	}
	return protocol.DirectResult{To: to, TS: d.TS, Stored: online == 0}, nil
}

func (s *Session) typing(ctx context.Context, cmd *protocol.Command) (any, error) {
	if err := s.memberOf(cmd.Room); err != nil {
		return nil, err
	}
	if err := s.node.Access(ctx, cmd.Room, s.client.User, s.tokenRooms); err != nil { // a revoke takes effect at once
		return nil, err
	}
	event := protocol.MustEncode(protocol.Typing{Type: "typing", Room: cmd.Room, User: s.client.User})
	err := s.node.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.Room(cmd.Room), Payload: event, Exclude: s.client.ID})
	return struct{}{}, brokerError("typing in "+cmd.Room, err)
}

func (s *Session) roomList(ctx context.Context) (any, error) {
	rooms, err := s.node.Rooms(ctx)
	if err != nil {
		return nil, err
	}
	// Only the rooms the user may enter: a private room's name and size
	// are the private room's business (SPEC §13).
	res := protocol.RoomsResult{Rooms: make([]protocol.RoomCount, 0, len(rooms))}
	for _, r := range rooms {
		if err := s.node.Access(ctx, r.Room, s.client.User, s.tokenRooms); err != nil {
			if protocol.AsError(err).Code == protocol.CodeForbidden {
				continue
			}
			return nil, err
		}
		res.Rooms = append(res.Rooms, protocol.RoomCount{Room: r.Room, Members: r.Members})
	}
	return res, nil
}

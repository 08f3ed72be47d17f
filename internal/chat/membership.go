package chat

import (
	"context"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/core/logx"
)

// Server-side membership (SPEC §13): the admin API grants a user a private
// room and joins every connection the user has, or revokes the grant and
// removes them, on every node. The node of each connection runs the join
// or the removal in the session's order of commands (its inbox), so that
// it never races the session's own commands.

// Grant grants user the room and joins each of the user's connections,
// cluster-wide; it reports how many connections the user has.
func (n *Node) Grant(ctx context.Context, room, user string) (int, error) {
	return n.membership(ctx, room, user, broker.KindSubscribe)
}

// Revoke revokes user's grant of the room and removes each of the user's
// connections from it, cluster-wide; it reports how many connections the
// user has (each one in the room is removed).
func (n *Node) Revoke(ctx context.Context, room, user string) (int, error) {
	return n.membership(ctx, room, user, broker.KindUnsubscribe)
}

func (n *Node) membership(ctx context.Context, room, user string, kind broker.Kind) (int, error) {
	if err := protocol.CheckRoom(room); err != nil {
		return 0, err
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	var err error
	if kind == broker.KindSubscribe {
		err = n.broker.Grant(ctx, room, user)
	} else {
		err = n.broker.Revoke(ctx, room, user)
	}
	if err != nil {
		return 0, brokerError("grant of "+room, err)
	}
	if err := n.broker.Emit(ctx, broker.Delivery{Kind: kind, Topic: broker.User(user), Room: room}); err != nil {
		return 0, brokerError("membership of "+user, err)
	}
	return n.UserConnections(ctx, user)
}

// Grants lists the users granted a room, sorted.
func (n *Node) Grants(ctx context.Context, room string) ([]string, error) {
	if err := protocol.CheckRoom(room); err != nil {
		return nil, err
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	users, err := n.broker.Grants(ctx, room)
	return nonNil(users), brokerError("grants of "+room, err)
}

// sessionsOf lists this node's started sessions of user (one still
// starting is not registered with the Hub yet, and has access to a granted
// room anyway). An admin operation: it walks every session.
func (n *Node) sessionsOf(user string) []*Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*Session
	for _, s := range n.sessions {
		if s.client.User == user && s.started.Load() {
			out = append(out, s)
		}
	}
	return out
}

// serverMembership queues a join (subscribed) or a removal (removed) of
// the session in its order of commands.
func (s *Session) serverMembership(room string, join bool) {
	s.inbox.push(func() {
		s.cmdMu.Lock()
		defer s.cmdMu.Unlock()
		ctx, cancel := brokerContext(context.Background())
		defer cancel()
		if join {
			s.subscribe(ctx, room)
		} else {
			s.unsubscribe(ctx, room)
		}
	}, s.runInbox)
}

// subscribe joins the session to room as a join command would, and tells
// it with a subscribed event that holds what a join reply holds.
func (s *Session) subscribe(ctx context.Context, room string) {
	cmd := protocol.Command{Type: "join", Room: room}
	if err := s.joinAs(ctx, &cmd, subscribedEvent); err != nil {
		logx.Errorf("session %s: subscribe to %s: %v", s.client.ID, room, err)
		s.client.EnqueueReply(encodeReply(nil, nil, err))
	}
}

func subscribedEvent(_ *protocol.Command, res protocol.JoinResult) []byte {
	res.Recovered = false
	return protocol.MustEncode(protocol.Subscribed{Type: "subscribed", JoinResult: res})
}

// unsubscribe removes the session from room, if it is in it: it gets a
// removed event, and the members left.
func (s *Session) unsubscribe(ctx context.Context, room string) {
	if _, ok := s.rooms[room]; !ok {
		return
	}
	removed := protocol.MustEncode(protocol.Removed{Type: "removed", Room: room, TS: time.Now().UnixMilli()})
	if err := s.node.hub.Leave(s.client, room, removed); err != nil {
		return // shutting down
	}
	s.leaveRoom(ctx, room)
}

// DirectToClient sends a direct message to the one connection client, on
// any node (SPEC §13), from from.
func (n *Node) DirectToClient(ctx context.Context, client, from, text string) error {
	if err := protocol.CheckText(text, n.cfg.MaxText); err != nil {
		return err
	}
	c, err := n.findClient(ctx, client)
	if err != nil {
		return err
	}
	d := protocol.Direct{Type: "direct", ID: n.newID(), From: from, To: c.User, Text: text, TS: time.Now().UnixMilli()}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	err = n.broker.Emit(ctx, broker.Delivery{Kind: broker.KindEvent, Topic: broker.NodeTopic(c.Node), Client: client, Payload: protocol.MustEncode(d)})
	return brokerError("direct to "+client, err)
}

// KickClient closes the one connection client, on any node, with 4003.
func (n *Node) KickClient(ctx context.Context, client string) error {
	c, err := n.findClient(ctx, client)
	if err != nil {
		return err
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	err = n.broker.Emit(ctx, broker.Delivery{Kind: broker.KindKick, Topic: broker.NodeTopic(c.Node), Client: client})
	return brokerError("kick "+client, err)
}

// findClient looks a live connection up, cluster-wide: client_offline when
// there is none.
func (n *Node) findClient(ctx context.Context, client string) (broker.Conn, error) {
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	c, ok, err := n.broker.Session(ctx, client)
	if err != nil {
		return c, brokerError("client "+client, err)
	}
	if !ok {
		return c, protocol.Errorf(protocol.CodeClientOffline, "no connection %s", client)
	}
	return c, nil
}

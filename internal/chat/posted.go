package chat

import (
	"context"
	"unicode/utf8"

	"chat/internal/broker"
	"chat/internal/protocol"
)

// PostCommands takes a frame of commands posted over HTTP for a session
// (SPEC §12: POST /api/sessions/:session/commands) on any node, and
// reports how many commands it holds. The session runs them in order, with
// its rate limit and every rule of a WebSocket frame; their replies and
// errors reach the client on the session's stream. A session on another
// node is reached through the broker, so clients need no sticky sessions.
func (n *Node) PostCommands(ctx context.Context, session, key string, frame []byte) (int, error) {
	if len(frame) > n.cfg.MaxFrameBytes {
		return 0, protocol.Errorf(protocol.CodeTooLarge, "commands are limited to %d bytes per request", n.cfg.MaxFrameBytes)
	}
	if !utf8.Valid(frame) {
		return 0, protocol.Errorf(protocol.CodeBadRequest, "the commands are not valid UTF-8")
	}
	accepted := 0
	for range protocol.Lines(frame) {
		accepted++
	}
	n.mu.Lock()
	s := n.sessions[session]
	n.mu.Unlock()
	if s != nil {
		if !checkKey(s.presence.KeyHash, key) {
			return 0, errWrongKey
		}
		if accepted > 0 && !s.Submit(frame) {
			return 0, s.refusal()
		}
		return accepted, nil
	}
	ctx, cancel := brokerContext(ctx)
	defer cancel()
	c, ok, err := n.broker.Session(ctx, session)
	if err != nil {
		return 0, brokerError("session "+session, err)
	}
	if !ok || c.Node == n.ID { // this node's sessions are all in n.sessions
		return 0, errSessionClosed
	}
	if !checkKey(c.KeyHash, key) {
		return 0, errWrongKey
	}
	if accepted > 0 {
		d := broker.Delivery{Kind: broker.KindCommand, Topic: broker.NodeTopic(c.Node), Client: session, Payload: frame}
		if err := n.broker.Emit(ctx, d); err != nil {
			return 0, brokerError("commands for "+session, err)
		}
	}
	return accepted, nil
}

var (
	errWrongKey      = protocol.Errorf(protocol.CodeForbidden, "X-Session-Key is missing or wrong")
	errSessionClosed = protocol.Errorf(protocol.CodeSessionClosed, "the session has ended")
	errInboxFull     = protocol.Errorf(protocol.CodeRateLimited, "too many requests of commands are waiting; wait for their replies")
)

// refusal says why Submit refused a frame.
func (s *Session) refusal() error {
	s.inbox.mu.Lock()
	defer s.inbox.mu.Unlock()
	if s.inbox.stopped {
		return errSessionClosed
	}
	return errInboxFull
}

// deliver is the node's broker handler: what concerns one session
// (commands forwarded from another node, a direct message or a kick aimed
// at one connection) goes to that session, what concerns a user's sessions
// (a grant's join, a revoke's removal) to each of them, and everything
// else to the Hub.
func (n *Node) deliver(d broker.Delivery) {
	switch {
	case d.Kind == broker.KindSubscribe || d.Kind == broker.KindUnsubscribe:
		for _, s := range n.sessionsOf(d.Topic.Name) {
			s.serverMembership(d.Room, d.Kind == broker.KindSubscribe)
		}
		return
	case d.Topic.Kind != broker.TopicNode:
		n.hub.Deliver(d)
		return
	}
	n.mu.Lock()
	s := n.sessions[d.Client]
	n.mu.Unlock()
	if s == nil {
		return // ended since the other node looked it up
	}
	switch d.Kind {
	case broker.KindEvent:
		s.client.Enqueue(d.Payload)
		return
	case broker.KindKick:
		s.Close(protocol.CloseKicked, "kicked")
		return
	}
	if !s.Submit(d.Payload) {
		// The client posted on regardless of its replies: each command is
		// answered rate_limited (by id when it has one), as the commands
		// of a WebSocket frame over the rate limit would be.
		for line := range protocol.Lines(d.Payload) {
			cmd, _ := protocol.DecodeCommand(line)
			s.client.EnqueueReply(encodeReply(cmd.ID, nil, errInboxFull))
		}
	}
}

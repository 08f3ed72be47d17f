package chat

import (
	"context"
	"sync"

	"chat/internal/broker"
)

// subscriptions counts this node's references to each topic: the first
// local member of a room (or connection of a user) subscribes the node, the
// last one unsubscribes it.
type subscriptions struct {
	broker broker.Broker

	mu     sync.Mutex // guards topics and every entry's refs
	topics map[broker.Topic]*subscription
}

type subscription struct {
	refs   int        // guarded by subscriptions.mu
	mu     sync.Mutex // serializes Subscribe and Unsubscribe of this topic
	active bool       // guarded by mu
}

func newSubscriptions(b broker.Broker) *subscriptions {
	return &subscriptions{broker: b, topics: make(map[broker.Topic]*subscription)}
}

// acquire takes a reference and returns once the node is subscribed.
func (s *subscriptions) acquire(ctx context.Context, t broker.Topic) error {
	s.mu.Lock()
	sub := s.topics[t]
	if sub == nil {
		sub = &subscription{}
		s.topics[t] = sub
	}
	sub.refs++
	s.mu.Unlock()

	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.active {
		return nil
	}
	if err := s.broker.Subscribe(ctx, t); err != nil {
		s.mu.Lock()
		sub.refs--
		s.mu.Unlock()
		return err
	}
	sub.active = true
	return nil
}

// release drops a reference; the last one unsubscribes. An entry leaves the
// map only after its Unsubscribe returned, so a new Subscribe of the topic
// can never be overtaken by an old Unsubscribe.
func (s *subscriptions) release(ctx context.Context, t broker.Topic) error {
	s.mu.Lock()
	sub := s.topics[t]
	if sub == nil {
		s.mu.Unlock()
		return nil
	}
	sub.refs--
	s.mu.Unlock()

	sub.mu.Lock()
	defer sub.mu.Unlock()
	s.mu.Lock()
	idle := sub.refs == 0
	s.mu.Unlock()
	if !idle || !sub.active {
		return nil
	}
	err := s.broker.Unsubscribe(ctx, t)
	sub.active = false
	s.mu.Lock()
	if sub.refs == 0 && s.topics[t] == sub {
		delete(s.topics, t)
	}
	s.mu.Unlock()
	return err
}

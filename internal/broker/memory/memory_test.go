package memory

import (
	"sync"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/brokertest"
)

func TestConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, opts broker.Options) brokertest.Cluster {
		c := &cluster{clock: &fakeClock{now: time.Now()}}
		c.backend = NewBackend(opts)
		c.backend.now = c.clock.Now
		return c
	})
}

// cluster runs the suite's nodes on one Backend whose clock the suite
// advances, so that expiry tests neither sleep nor race the real clock.
type cluster struct {
	backend *Backend
	clock   *fakeClock
}

func (c *cluster) Node(_ *testing.T, h broker.Handler) broker.Broker { return c.backend.Node(h) }

func (c *cluster) Advance(_ *testing.T, d time.Duration) { c.clock.Advance(d) }

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

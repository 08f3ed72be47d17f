package hub

import "testing"

// A burst grows a client's event slices to hundreds of slots; the first
// small batch after it lets them go, so that an idle connection does not
// keep a burst's slots for its whole life. Steady traffic keeps its own.
func TestClientDropsABurstsSlicesAfterASmallBatch(t *testing.T) {
	c := NewClient("c1", "alice", 1<<20)
	event := []byte(`{"type":"joined"}`)
	fill := func(n int) {
		for range n {
			c.Enqueue(event)
		}
	}
	fill(500)
	c.Take()
	fill(500) // a burst on both slices
	c.Take()
	fill(1)
	c.Take()
	if q, s := cap(c.queue), cap(c.spare); q > maxIdleEvents || s > maxIdleEvents {
		t.Fatalf("after a small batch the client keeps %d and %d slots, want at most %d", q, s, maxIdleEvents)
	}
	for range 3 { // steady batches of 200 reuse their slices
		fill(200)
		c.Take()
	}
	if q := cap(c.queue); q < 200 {
		t.Fatalf("steady batches of 200 left a queue of %d slots", q)
	}
}

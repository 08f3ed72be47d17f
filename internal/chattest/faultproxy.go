package chattest

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// FaultProxy is a TCP proxy that stands between the service and a server
// (Redis) and injects the faults of a bad network: latency on every
// forwarded chunk, and a cut link.
//
// Ownership: the proxy owns its listener, every connection it accepted, the
// upstream connection it dialed for each, and every goroutine it started;
// Close ends them all and returns only once they have ended. Its methods are
// safe for concurrent use. The peers own nothing of the proxy: to them it is
// a network that delays or drops their bytes.
type FaultProxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close: aborts pending dials
	cancel context.CancelFunc

	mu      sync.Mutex
	latency time.Duration
	changed chan struct{} // closed (and replaced) when latency changes: wakes the writers
	cut     bool
	closed  bool
	links   map[*link]struct{} // live connection pairs

	wg sync.WaitGroup // the accept loop and every link's goroutines
}

// proxyChunkSize is the most one read forwards as one chunk; proxyQueue is
// how many chunks a direction holds while it waits out the latency before
// its reader stops reading (and TCP pushes back on the sender).
const (
	proxyChunkSize = 32 << 10
	proxyQueue     = 256
	proxyDial      = 5 * time.Second // dialing the target, per accepted connection
)

// StartFaultProxy listens on 127.0.0.1:0, forwards every connection to
// target, and closes when the test ends.
func StartFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &FaultProxy{
		target:  target,
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		changed: make(chan struct{}),
		links:   make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the address to connect to instead of the target.
func (p *FaultProxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk, in both directions, by d from the moment
// the proxy read it; 0 forwards at once. A change applies to chunks already
// waiting too, so lowering it releases them (still in order).
func (p *FaultProxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *FaultProxy) delay() (time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latency, p.changed
}

// Cut closes every live connection, dropping what was in flight, and closes
// every new one as soon as it is accepted, until Restore: the peer sees its
// connections reset and its reconnects fail.
func (p *FaultProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
}

// Restore ends a cut and removes the latency: new connections are forwarded
// again.
func (p *FaultProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
	p.SetLatency(0)
}

// Close stops the proxy: the listener, every connection and every goroutine.
// It is idempotent.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	p.cancel()
	_ = p.ln.Close()
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

func (p *FaultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		l := &link{down: c, done: make(chan struct{})}
		p.mu.Lock()
		if p.cut || p.closed {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// link is one proxied connection: down is the accepted side, up the dialed
// one. Its two directions each run a reader and a writer goroutine. A
// reader that ends lets its writer forward what it queued (bytes in flight
// still arrive after their sender closed); a writer that ends, or any
// write error, closes the whole link.
type link struct {
	down net.Conn
	done chan struct{} // closed by close

	mu   sync.Mutex
	up   net.Conn // nil until dialed
	once sync.Once
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		_ = l.down.Close()
		l.mu.Lock()
		if l.up != nil {
			_ = l.up.Close()
		}
		l.mu.Unlock()
	})
}

func (p *FaultProxy) serve(l *link) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
	}()
	defer l.close()
	ctx, cancel := context.WithTimeout(p.ctx, proxyDial)
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		return
	}
	l.mu.Lock()
	l.up = up
	l.mu.Unlock()
	select {
	case <-l.done: // cut or closed while dialing
		_ = up.Close()
		return
	default:
	}
	var wg sync.WaitGroup
	for _, dir := range [][2]net.Conn{{l.down, up}, {up, l.down}} {
		queue := make(chan chunk, proxyQueue)
		wg.Add(2)
		go func(src net.Conn) { defer wg.Done(); l.read(src, queue) }(dir[0])
		go func(dst net.Conn) { defer wg.Done(); p.write(l, dst, queue) }(dir[1])
	}
	wg.Wait()
}

// chunk is what one read returned, stamped with when it was read.
type chunk struct {
	data []byte
	at   time.Time
}

// read queues what src sends; at its end (EOF or error) it closes the
// queue, so that the writer forwards what is queued and then ends the link.
func (l *link) read(src net.Conn, queue chan<- chunk) {
	defer close(queue)
	buf := make([]byte, proxyChunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c := chunk{data: append([]byte(nil), buf[:n]...), at: time.Now()}
			select {
			case queue <- c:
			case <-l.done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// write forwards the queued chunks to dst in order, each once the latency
// has passed since it was read.
func (p *FaultProxy) write(l *link, dst net.Conn, queue <-chan chunk) {
	defer l.close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var c chunk
		var ok bool
		select {
		case c, ok = <-queue:
			if !ok {
				return // the source ended and everything it sent is forwarded
			}
		case <-l.done:
			return
		}
		for {
			latency, changed := p.delay()
			wait := time.Until(c.at.Add(latency))
			if wait <= 0 {
				break
			}
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-changed:
				timer.Stop() // since Go 1.23 no stale tick is left in timer.C
			case <-l.done:
				return
			}
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
}

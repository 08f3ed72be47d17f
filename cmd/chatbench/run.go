package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// bench holds one run's connections.
type bench struct {
	cfg     *config
	closing atomic.Bool // set when the bench closes its connections

	receivers []*receiver // set up receivers (failed ones are left out)
	senders   []*sender

	http *http.Client // -receiver-transport sse: every stream and POST

	mu            sync.Mutex
	connectErrors map[string]int
}

// setup is a connection that passed the handshake (and welcome), with the
// event lines that followed the welcome in its frame.
type setup struct {
	url     string
	ws      *websocket.Conn // nil for an SSE stream
	sse     *sseStream      // nil for a WebSocket
	pending [][]byte
	seq     int64 // the room's seq in the join reply
}

// close drops a connection that failed its setup.
func (c *setup) close() {
	if c.sse != nil {
		c.sse.close()
		return
	}
	_ = c.ws.Close()
}

func run(ctx context.Context, cfg *config) (*report, error) {
	b := &bench{cfg: cfg, connectErrors: map[string]int{}}
	if cfg.transport == transportSSE {
		b.http = newSSEClient(cfg)
		defer b.http.CloseIdleConnections()
	}
	rep := newReport(cfg)
	srv := newServerProbe(cfg.serverPID)
	self0, _ := readProc("self")
	srv.sample("before")

	// 1. Receivers: connect all and wait for every welcome.
	start := time.Now()
	conns := b.connectReceivers(ctx)
	rep.ConnectMs = ms(time.Since(start))
	srv.sample("connected")

	if cfg.connectOnly {
		for i, c := range conns {
			if c != nil {
				b.startReceiver(i, c)
			}
		}
		rep.finishConnect(b)
		select {
		case <-time.After(cfg.hold):
		case <-ctx.Done():
		}
		srv.sample("end")
		b.closeAll()
		err := b.setupError()
		rep.SetupFailed = err != nil
		return b.finish(ctx, rep, srv, self0), err
	}

	// 2. Join the room (chat mode), then start reading.
	joinStart := time.Now()
	lastReply := b.joinReceivers(ctx, conns)
	rep.JoinMs = ms(time.Since(joinStart))
	if b.http != nil {
		// The joins' POST connections are done with: the server should
		// hold only the streams, as it holds only the WebSockets.
		b.http.CloseIdleConnections()
	}
	srv.sample("joined")
	if !cfg.raw && !lastReply.IsZero() {
		rep.LastJoinReplyMs = ms(lastReply.Sub(start))
	}
	rep.finishConnect(b)

	// The server's memory once the joins have settled, before any sender
	// connects: what each member costs it.
	if srv.pid > 0 && len(b.receivers) > 0 {
		joined := time.Now()
		select {
		case <-time.After(cfg.settle):
		case <-ctx.Done():
		}
		srv.sample("settled")
		rep.settledAfter = time.Since(joined) // shorter than -settle if the run stopped
	}

	// 3. Senders: connect, join, start reading.
	sconns := b.connect(ctx, cfg.senders, func(i int) (string, string) {
		return cfg.sendersURL, fmt.Sprintf("%s-s%d", cfg.namePrefix, i)
	})
	b.startSenders(ctx, sconns)
	rep.SendersConnected = len(b.senders)
	if err := b.setupError(); err != nil {
		rep.SetupFailed = true
		b.closeAll()
		return b.finish(ctx, rep, srv, self0), err
	}

	// 4. Send, every sender on the same schedule.
	srv.sample("send")
	sendStart := time.Now()
	var wg sync.WaitGroup
	for _, s := range b.senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sendLoop(ctx, sendStart)
		}()
	}
	wg.Wait()
	rep.SendSeconds = time.Since(sendStart).Seconds()

	// 5. Wait for outstanding replies and deliveries, then stop.
	rep.Drained = b.drain(ctx)
	srv.sample("end")

	// 6. Leave: close every connection at once and wait for the room to
	// empty on every replica (chat mode, raw mode has no room to ask
	// about; and not once the run has stopped).
	closed := time.Now()
	var leave chan *leaveReport
	if !cfg.raw && ctx.Err() == nil {
		leave = make(chan *leaveReport, 1)
		go func() { leave <- b.awaitEmpty(ctx, closed, srv) }()
	}
	b.closeAll()
	if leave != nil {
		rep.Leave = <-leave
	}
	rep.sendStartNs = sendStart.UnixNano()
	return b.finish(ctx, rep, srv, self0), nil
}

// connect opens n connections in parallel (at most cfg.dialConcurrency at a
// time); target gives connection i's URL and user name. Failed connections
// are nil.
func (b *bench) connect(ctx context.Context, n int, target func(i int) (url, name string)) []*setup {
	conns := make([]*setup, n)
	parallel(ctx, n, b.cfg.dialConcurrency, func(i int) {
		u, name := target(i)
		ws, err := dial(ctx, u, name)
		if err != nil {
			b.noteConnectError(err)
			return
		}
		var pending [][]byte
		if !b.cfg.raw {
			if pending, err = readWelcome(ws); err != nil {
				_ = ws.Close()
				b.noteConnectError(err)
				return
			}
		}
		conns[i] = &setup{url: u, ws: ws, pending: pending}
	})
	return conns
}

// connectReceivers opens the receivers, spread round-robin over the
// replicas: WebSockets, or SSE streams with -receiver-transport sse.
func (b *bench) connectReceivers(ctx context.Context) []*setup {
	cfg := b.cfg
	name := func(i int) string { return fmt.Sprintf("%s-r%d", cfg.namePrefix, i) }
	if cfg.transport != transportSSE {
		return b.connect(ctx, cfg.receivers, func(i int) (string, string) {
			return cfg.urls[i%len(cfg.urls)], name(i)
		})
	}
	conns := make([]*setup, cfg.receivers)
	parallel(ctx, cfg.receivers, cfg.dialConcurrency, func(i int) {
		u := cfg.sseURLs[i%len(cfg.sseURLs)]
		s, err := dialSSE(ctx, b.http, u, name(i))
		if err != nil {
			b.noteConnectError(err)
			return
		}
		conns[i] = &setup{url: u, sse: s}
	})
	return conns
}

func (b *bench) noteConnectError(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.connectErrors[closeReason(err)]++
}

// joinReceivers joins every connected receiver to the room (not in raw
// mode) and starts its read goroutine. It returns when the last join reply
// arrived (zero if none did).
func (b *bench) joinReceivers(ctx context.Context, conns []*setup) time.Time {
	var lastReply atomic.Int64 // UnixNano
	parallel(ctx, len(conns), b.cfg.dialConcurrency, func(i int) {
		c := conns[i]
		if c == nil {
			return
		}
		if !b.cfg.raw {
			var seq int64
			var pending [][]byte
			var err error
			if c.sse != nil {
				seq, pending, err = joinSSE(ctx, b.http, c.sse, b.cfg.room)
			} else {
				seq, pending, err = join(c.ws, b.cfg.room)
			}
			if err != nil {
				c.close()
				conns[i] = nil
				b.noteConnectError(err)
				return
			}
			c.pending = append(c.pending, pending...)
			c.seq = seq
			storeMax(&lastReply, time.Now().UnixNano())
		}
	})
	for i, c := range conns {
		if c != nil {
			b.startReceiver(i, c)
		}
	}
	if lastReply.Load() == 0 {
		return time.Time{}
	}
	return time.Unix(0, lastReply.Load())
}

// storeMax raises a to v unless it already holds more.
func storeMax(a *atomic.Int64, v int64) {
	for {
		if old := a.Load(); old >= v || a.CompareAndSwap(old, v) {
			return
		}
	}
}

func (b *bench) startReceiver(i int, c *setup) {
	r := newReceiver(i, c.url, c.ws, b.cfg)
	r.lastSeq = c.seq
	b.receivers = append(b.receivers, r)
	if c.sse != nil {
		r.sse = c.sse
		go r.readSSELoop(c.pending, &b.closing)
		return
	}
	go r.readLoop(c.pending, &b.closing)
}

// startSenders joins every connected sender to the room (not in raw mode)
// and starts its read goroutine.
func (b *bench) startSenders(ctx context.Context, conns []*setup) {
	for i, c := range conns {
		if c == nil || ctx.Err() != nil {
			continue
		}
		if !b.cfg.raw {
			if _, _, err := join(c.ws, b.cfg.room); err != nil {
				_ = c.ws.Close()
				b.noteConnectError(err)
				continue
			}
		}
		s := newSender(i, c.ws, b.cfg)
		b.senders = append(b.senders, s)
		go s.readLoop(&b.closing)
	}
}

// setupError reports a run that cannot measure anything.
func (b *bench) setupError() error {
	switch {
	case b.cfg.receivers > 0 && len(b.receivers) == 0:
		return errors.New("no receiver could connect")
	case !b.cfg.connectOnly && b.cfg.senders > 0 && len(b.senders) == 0:
		return errors.New("no sender could connect")
	}
	return nil
}

// drain waits until every sender has its replies and every live receiver
// has every accepted message, at most cfg.drain. It reports whether all
// arrived.
func (b *bench) drain(ctx context.Context) bool {
	deadline := time.Now().Add(b.cfg.drain)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if b.allDelivered() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return false
		}
	}
}

func (b *bench) allDelivered() bool {
	var acked int64
	for _, s := range b.senders {
		if !b.cfg.raw && !closed(s.readDone) && s.answered.Load() < int64(s.sent) {
			return false
		}
		acked += s.ackedN.Load()
	}
	for _, r := range b.receivers {
		if !closed(r.done) && r.delivered.Load() < acked {
			return false
		}
	}
	return true
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// closeAll closes every connection (a WebSocket with a close frame, without
// waiting for the answer; an SSE stream by closing its TCP connection) and
// waits for the read goroutines to end.
func (b *bench) closeAll() {
	b.closing.Store(true)
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bench done")
	deadline := time.Now().Add(time.Second)
	var wait []chan struct{}
	for _, r := range b.receivers {
		if r.sse != nil {
			r.sse.close() // the server sees its client go away
		} else {
			_ = r.ws.WriteControl(websocket.CloseMessage, msg, deadline)
			_ = r.ws.Close()
		}
		wait = append(wait, r.done)
	}
	for _, s := range b.senders {
		_ = s.ws.WriteControl(websocket.CloseMessage, msg, deadline)
		_ = s.ws.Close()
		wait = append(wait, s.readDone)
	}
	timeout := time.After(10 * time.Second)
	for _, c := range wait {
		select {
		case <-c:
		case <-timeout:
			return // a goroutine that does not end; finish reads what it can
		}
	}
}

// parallel runs f(0..n-1) on at most workers goroutines, stopping early
// when ctx ends.
func parallel(ctx context.Context, n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// serverProbe samples the server process at named points of the run.
type serverProbe struct {
	pid     int
	samples map[string]procSample
	err     error
}

func newServerProbe(pid int) *serverProbe {
	return &serverProbe{pid: pid, samples: map[string]procSample{}}
}

func (p *serverProbe) sample(name string) {
	if p.pid <= 0 {
		return
	}
	s, err := readProc(strconv.Itoa(p.pid))
	if err != nil {
		if p.err == nil {
			p.err = err
		}
		return
	}
	p.samples[name] = s
}

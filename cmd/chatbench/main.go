// Command chatbench is a load generator for the chat service's WebSocket
// protocol (SPEC §3). It opens N receivers in one room, spread round-robin
// over one or more replicas (over WebSocket, or with -receiver-transport sse
// as SSE streams that post their join: SPEC §12), lets S senders publish M
// messages each over WebSocket, and reports delivery counts, loss,
// duplicates, order violations, disconnects, latency percentiles and, given
// the server's pid, the server's CPU and memory. At the end it closes every
// connection at once and polls each replica's REST API
// (GET /api/rooms/<room>/members) until the room is empty everywhere.
//
//	go run ./cmd/chatbench -url ws://127.0.0.1:8888/ws -receivers 200 -senders 1 -messages 2000 -rate 200
//	go run ./cmd/chatbench -url ws://127.0.0.1:8881/ws,ws://127.0.0.1:8882/ws -senders-url ws://127.0.0.1:8881/ws ...
//	go run ./cmd/chatbench -connect-only -receivers 5000 -hold 5s -server-pid 1234
//	go run ./cmd/chatbench -receiver-transport sse -url ws://127.0.0.1:8888/ws -receivers 200 ...  (receivers on /sse)
//	go run ./cmd/chatbench -raw -url ws://127.0.0.1:8080/ws ...   (gorilla/websocket examples/chat)
//
// Every message text is "s<sender>:<counter>:<send time ns>:" padded with
// 'x' to -size bytes, so a receiver can compute the latency (both ends run
// on one host and share its clock) and detect loss and duplicates.
//
// Everything is bounded: the number of connections and messages by flag
// limits, and the run by -duration (a hard stop). It only connects to the
// URLs it is given.
package main

import (
	"chat/internal/protocol"
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

// Bounds on the flags, so that a typo cannot start an unbounded run.
const (
	maxReceivers = 50000
	maxSenders   = 1000
	maxMessages  = 1000000
	maxSize      = 65536
	maxDuration  = 10 * time.Minute
)

// config is the parsed command line.
type config struct {
	urls            []string
	sseURLs         []string // -receiver-transport sse: each -url's /sse, in the same order
	sendersURL      string
	transport       string // -receiver-transport: transportWS or transportSSE
	receivers       int
	senders         int
	messages        int
	rate            float64
	size            int
	room            string
	duration        time.Duration
	drain           time.Duration
	sendFor         time.Duration
	replyTimeout    time.Duration
	connectOnly     bool
	hold            time.Duration
	settle          time.Duration
	serverPID       int
	raw             bool
	jsonOut         bool
	dialConcurrency int
	namePrefix      string
	cpuProfile      string
}

// urlList is a flag that may be repeated and holds comma-separated URLs.
type urlList []string

func (u *urlList) String() string { return strings.Join(*u, ",") }

func (u *urlList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if err := checkWSURL(s); err != nil {
			return err
		}
		*u = append(*u, s)
	}
	return nil
}

func checkWSURL(s string) error {
	p, err := url.Parse(s)
	if err != nil {
		return err
	}
	if p.Scheme != "ws" && p.Scheme != "wss" {
		return fmt.Errorf("%q: want a ws:// or wss:// URL", s)
	}
	if p.Host == "" {
		return fmt.Errorf("%q: no host", s)
	}
	return nil
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("chatbench", flag.ContinueOnError)
	var c config
	var urls urlList
	fs.Var(&urls, "url", "WebSocket URL of a replica (repeatable or comma-separated); receivers are spread round-robin (default ws://127.0.0.1:8888/ws)")
	fs.StringVar(&c.sendersURL, "senders-url", "", "WebSocket URL the senders connect to (default: the first -url)")
	fs.IntVar(&c.receivers, "receivers", 100, "number of receiving connections")
	fs.IntVar(&c.senders, "senders", 1, "number of sending connections")
	fs.IntVar(&c.messages, "messages", 100, "messages per sender")
	fs.Float64Var(&c.rate, "rate", 0, "messages per second per sender; 0: closed loop (wait for each send's reply, or in -raw mode for its echo)")
	fs.IntVar(&c.size, "size", 100, "bytes of message text (at least the header s<id>:<n>:<ns>:)")
	fs.StringVar(&c.room, "room", "", "room name (default: bench-<random>, a fresh room)")
	fs.DurationVar(&c.duration, "duration", 60*time.Second, "hard cap on the whole run")
	fs.DurationVar(&c.sendFor, "send-for", 0, "stop sending after this long even if -messages are not all sent (0: no limit); then drain")
	fs.DurationVar(&c.drain, "drain", 5*time.Second, "after the last send, how long to wait for outstanding deliveries")
	fs.DurationVar(&c.replyTimeout, "reply-timeout", 10*time.Second, "closed loop: how long to wait for one reply")
	fs.BoolVar(&c.connectOnly, "connect-only", false, "only open the receivers, wait for every welcome, hold them for -hold and exit")
	fs.DurationVar(&c.hold, "hold", 5*time.Second, "with -connect-only: how long to hold the connections open")
	fs.DurationVar(&c.settle, "settle", 2*time.Second, "with -server-pid: after the joins, wait this long before reading the server's settled RSS and connecting the senders")
	fs.IntVar(&c.serverPID, "server-pid", 0, "pid of the server process: report its CPU time and RSS growth from /proc")
	fs.StringVar(&c.transport, "receiver-transport", transportWS, "how the receivers connect: ws (WebSocket), or sse (GET /sse on each -url's host, the join POSTed to /api/sessions/<session>/commands); senders always use WebSocket")
	fs.BoolVar(&c.raw, "raw", false, "raw text frames (gorilla/websocket examples/chat): no welcome, no join, every frame line is a payload")
	fs.BoolVar(&c.jsonOut, "json", false, "print the report as JSON instead of text")
	fs.IntVar(&c.dialConcurrency, "dial-concurrency", 100, "connections set up in parallel")
	fs.StringVar(&c.namePrefix, "name", "bench", "user name prefix (receivers <name>-r<i>, senders <name>-s<i>)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write the bench's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	c.urls = urls
	if len(c.urls) == 0 {
		c.urls = []string{"ws://127.0.0.1:8888/ws"}
	}
	if c.sendersURL == "" {
		c.sendersURL = c.urls[0]
	} else if err := checkWSURL(c.sendersURL); err != nil {
		return nil, err
	}
	if c.room == "" {
		c.room = fmt.Sprintf("bench-%x", time.Now().UnixNano()&0xffffffffff)
	}
	switch {
	case c.receivers < 0 || c.receivers > maxReceivers:
		return nil, fmt.Errorf("-receivers must be in 0..%d", maxReceivers)
	case c.senders < 0 || c.senders > maxSenders:
		return nil, fmt.Errorf("-senders must be in 0..%d", maxSenders)
	case c.messages < 0 || c.messages > maxMessages:
		return nil, fmt.Errorf("-messages must be in 0..%d", maxMessages)
	case c.rate < 0:
		return nil, fmt.Errorf("-rate must not be negative")
	case c.size < 1 || c.size > maxSize:
		return nil, fmt.Errorf("-size must be in 1..%d", maxSize)
	case c.duration <= 0 || c.duration > maxDuration:
		return nil, fmt.Errorf("-duration must be in (0, %s]", maxDuration)
	case c.dialConcurrency < 1 || c.dialConcurrency > 10000:
		return nil, fmt.Errorf("-dial-concurrency must be in 1..10000")
	case !c.raw && !protocol.ValidRoom(c.room):
		return nil, fmt.Errorf("-room %q is not a valid room name", c.room)
	case c.drain < 0 || c.hold < 0 || c.sendFor < 0 || c.replyTimeout <= 0:
		return nil, fmt.Errorf("-drain, -hold, -send-for and -reply-timeout must be positive")
	case c.settle < 0:
		return nil, fmt.Errorf("-settle must not be negative")
	case c.transport != transportWS && c.transport != transportSSE:
		return nil, fmt.Errorf("-receiver-transport must be %s or %s", transportWS, transportSSE)
	case c.transport == transportSSE && c.raw:
		return nil, fmt.Errorf("-receiver-transport sse speaks the chat protocol: not with -raw")
	}
	if c.transport == transportSSE {
		for _, u := range c.urls {
			s, err := sseURL(u)
			if err != nil {
				return nil, err
			}
			c.sseURLs = append(c.sseURLs, s)
		}
	}
	return &c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if err.Error() != "flag: help requested" {
			fmt.Fprintln(os.Stderr, "chatbench:", err)
		}
		os.Exit(2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.duration)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Last resort: every blocking step is bounded by ctx or a deadline, but
	// should one still hang, the process exits anyway.
	go func() {
		time.Sleep(cfg.duration + 30*time.Second)
		fmt.Fprintln(os.Stderr, "chatbench: hard stop, the run did not finish in -duration + 30s")
		os.Exit(3)
	}()

	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chatbench:", err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "chatbench:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatbench:", err)
	}
	if rep != nil {
		if cfg.jsonOut {
			rep.writeJSON(os.Stdout)
		} else {
			rep.writeText(os.Stdout)
		}
	}
	if err != nil {
		os.Exit(1)
	}
}

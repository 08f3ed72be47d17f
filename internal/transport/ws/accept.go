package ws

import (
	"math"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"chat/internal/admission"
	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/protocol"
	"chat/internal/transport/wsraw"

	"github.com/gorilla/websocket"
)

// upgrader keeps idle connections cheap: a small read buffer (supplied by
// wsraw.Upgrade, hence ReadBufferSize 0), and write buffers shared through
// a pool, held only while gorilla writes a frame (its close on a protocol
// error; every other frame is the flushers').
var upgrader = websocket.Upgrader{
	WriteBufferSize: 4096,
	WriteBufferPool: &sync.Pool{},
	CheckOrigin:     func(*http.Request) bool { return true }, // Node.Admit checks it before the upgrade
	Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
		admission.WriteError(w, r, status, protocol.CodeBadRequest, reason.Error())
	},
}

// Transport carries a node's sessions over WebSockets. Its flushers (one
// per CPU) write the connections (writer.go).
type Transport struct {
	node     *chat.Node
	cfg      config.ChatConf
	flushers []*flusher
	next     atomic.Uint64
}

// New makes the node's WebSocket transport; its flushers stop when the node
// has shut down.
func New(node *chat.Node) *Transport {
	t := &Transport{node: node, cfg: node.Config()}
	for range runtime.GOMAXPROCS(0) {
		t.flushers = append(t.flushers, newFlusher(t.cfg.CoalesceWindow))
	}
	node.OnStop(func() {
		for _, f := range t.flushers {
			f.stop()
		}
	})
	return t
}

// ServeWS admits a WebSocket connection (every check before the upgrade:
// Node.Admit), upgrades it, starts its read pump and returns at once (SPEC
// §10: a handler that stays in the request holds go-zero's MaxConns slot
// and its timeouts).
func (t *Transport) ServeWS(w http.ResponseWriter, r *http.Request) {
	who, ok := t.node.Admit(w, r)
	if !ok {
		return
	}
	c := &Conn{t: t}
	if err := wsraw.UpgradeInto(&c.sock, &upgrader, w, r); err != nil {
		t.node.Release(who.User)
		return // the upgrader answered
	}
	// A bounded send buffer makes Chat.MaxQueueBytes the real bound on
	// what a reader that stalls can pin: the kernel's autotuning would let
	// it hold megabytes more (SPEC §11).
	c.sock.SetSendBuffer(t.cfg.SendBufferBytes)
	c.ws = c.sock.WS
	c.readDone = make(chan struct{})
	c.writeDone = make(chan struct{})
	c.flusher = t.flushers[t.next.Add(1)%uint64(len(t.flushers))]
	c.handshake = c.sock.Handshake
	c.timedAt = -1
	c.lastWrite = math.MinInt64 / 2 // long ago: the first write goes out at once
	c.session = t.node.Open(who, c, chat.SessionOptions{})
	c.client = c.session.Outbox()
	c.pinger = time.AfterFunc(t.cfg.PingInterval, c.ping)
	go c.readPump() // it hands the connection to the flushers once the welcome is queued
}

// Abort is chat.Transport's: the drain deadline passed; the socket is
// reset, so what a stalled reader was not sent goes with it.
func (c *Conn) Abort() {
	c.reset()
	_ = c.ws.Close()
}

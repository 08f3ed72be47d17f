package chat

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"chat/internal/admission"
	"chat/internal/broker"
	"chat/internal/hub"
	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/core/logx"
)

// Session is one client of the chat, whatever carries it: its identity,
// its rooms, its rate limit and its commands. It knows nothing of frames
// or streams. What it has to say goes to its outbox (Outbox: a hub.Client,
// the byte-bounded queue that the Hub fills too), which its transport
// drains and writes (internal/transport/ws, internal/transport/sse).
//
// Commands run one at a time, in order, under cmdMu: from the transport's
// reader (HandleFrame, a WebSocket's read pump) or from the session's
// inbox (Submit: commands posted over HTTP; the admin API's joins and
// removals). rooms, the rate limiter and userSubscribed belong to whoever
// holds cmdMu, and to End once the session is over.
type Session struct {
	node       *Node
	client     *hub.Client
	presence   broker.Conn
	limiter    *tokenBucket
	transport  Transport
	key        string      // an HTTP-commanded session's secret; "" for a WebSocket
	tokenRooms []string    // the token's rooms claim (SPEC §13)
	expiry     *time.Timer // closes the session with 4001 when its token expires

	rooms          map[string]struct{} // rooms joined
	userSubscribed bool                // Start took a reference on the user's topic

	// cmdMu is held while a command runs, whichever goroutine runs it: the
	// transport's reader, or the inbox (commands posted over HTTP, and
	// the admin API's joins and removals).
	cmdMu   sync.Mutex
	inbox   inbox
	started atomic.Bool // registered with the Hub: the admin API may join it to rooms
	ended   sync.Once
}

// Transport is what the node may ask of the transport that carries a session.
type Transport interface {
	// Abort ends the transport at once, dropping what is unsent: the
	// drain deadline passed. It must not block.
	Abort()
}

// Admit runs every check a new session passes before its transport opens
// (SPEC §2, §11, §12): the node is not draining, the origin, the user, and
// the connection caps. On refusal it has answered and reports false; on
// success the caller must either Open a session for user or Release it.
func (n *Node) Admit(w http.ResponseWriter, r *http.Request) (id admission.Identity, ok bool) {
	if n.draining.Load() {
		admission.WriteError(w, r, http.StatusServiceUnavailable, protocol.CodeUnavailable, "server shutting down")
		return id, false
	}
	if !admission.OriginAllowed(r, n.cfg.AllowedOrigins) {
		admission.WriteError(w, r, http.StatusForbidden, protocol.CodeForbidden, "origin not allowed")
		return id, false
	}
	id, err := admission.Resolve(r)
	if err != nil {
		admission.WriteError(w, r, http.StatusBadRequest, protocol.CodeBadRequest, protocol.AsError(err).Message)
		return id, false
	}
	if refusal := n.admit(id.User); refusal != "" {
		admission.WriteError(w, r, http.StatusServiceUnavailable, protocol.CodeUnavailable, refusal)
		return id, false
	}
	return id, true
}

// admit counts a connection of user against Chat.MaxConnections and
// Chat.MaxUserConnections (0: no cap per user), or says why it is refused.
func (n *Node) admit(user string) (refusal string) {
	if n.admitted.Add(1) > int64(n.cfg.MaxConnections) {
		n.admitted.Add(-1)
		return "too many connections"
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if limit := n.cfg.MaxUserConnections; limit > 0 && n.userConns[user] >= limit {
		n.admitted.Add(-1)
		return "too many connections for this user"
	}
	n.userConns[user]++
	return ""
}

// Release gives back an admitted place whose session never opened.
func (n *Node) Release(user string) {
	n.mu.Lock()
	if n.userConns[user]--; n.userConns[user] <= 0 {
		delete(n.userConns, user)
	}
	n.mu.Unlock()
	n.admitted.Add(-1)
}

// SessionOptions say how a transport carries a session.
type SessionOptions struct {
	// Commanded over HTTP: the session gets a secret key for its
	// commands (POST /api/sessions/:session/commands), sent in its welcome.
	Commanded bool
}

// Open makes the session of an admitted identity, carried by t. The
// transport then calls Start, and End once the session is over.
func (n *Node) Open(who admission.Identity, t Transport, opts SessionOptions) *Session {
	id, user := n.newID(), who.User
	s := &Session{
		node:       n,
		client:     hub.NewClient(id, user, n.cfg.MaxQueueBytes),
		presence:   broker.Conn{Client: id, User: user, Node: n.ID},
		limiter:    newTokenBucket(n.cfg.RateLimit, n.cfg.RateBurst),
		transport:  t,
		tokenRooms: who.Rooms,
	}
	if !who.Expires.IsZero() {
		// The session ends with its token (SPEC §13): after what is queued.
		s.expiry = time.AfterFunc(time.Until(who.Expires), func() { s.Close(protocol.CloseTokenExpired, "token expired") })
	}
	if opts.Commanded {
		var b [32]byte // 256 bits
		_, _ = rand.Read(b[:])
		s.key = hex.EncodeToString(b[:])
		s.presence.KeyHash = keyHash(s.key)
	}
	n.mu.Lock()
	n.sessions[id] = s
	n.mu.Unlock()
	n.wg.Add(1)
	return s
}

// keyHash is what the broker keeps of a session key, so that any node can
// check a key without the broker holding the secret itself.
func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// Outbox is the session's queue of encoded events, which its transport drains.
func (s *Session) Outbox() *hub.Client { return s.client }

// Close asks the transport to end the session with code (a WebSocket
// close code, or an SSE stream's close event) after what is queued.
func (s *Session) Close(code int, text string) {
	s.client.Close(hub.CloseRequest{Code: code, Text: text, Flush: true})
}

// CloseNow is Close without writing what is queued.
func (s *Session) CloseNow(code int, text string) {
	s.client.Close(hub.CloseRequest{Code: code, Text: text})
}

// Start registers the session: the user's topic first, so that a direct
// message sent once the user shows as online reaches it; presence before
// the welcome, so that a client that has its welcome is counted online; the
// welcome before the Hub can queue anything else. On failure the session
// is closed (1013 or 1001) and Start reports false.
func (s *Session) Start() bool {
	n := s.node
	ctx, cancel := brokerContext(context.Background())
	defer cancel()
	if err := n.subs.acquire(ctx, broker.User(s.client.User)); err != nil {
		logx.Errorf("session %s: subscribe user: %v", s.client.ID, err)
		s.CloseNow(closeTryAgainLater, "broker unavailable")
		return false
	}
	s.userSubscribed = true
	if err := n.broker.Connect(ctx, s.presence); err != nil {
		logx.Errorf("session %s: presence: %v", s.client.ID, err)
	}
	welcome := protocol.Welcome{
		Type: "welcome", Client: s.client.ID, User: s.client.User, Node: n.ID,
		Limits: protocol.Limits{MaxText: n.cfg.MaxText, MaxRooms: n.cfg.MaxRooms, Rate: n.cfg.RateLimit},
	}
	if s.key != "" {
		welcome.Session, welcome.SessionKey = s.client.ID, s.key
	}
	s.client.EnqueueReply(protocol.MustEncode(welcome))
	if n.archive != nil {
		s.deliverOffline(ctx)
	}
	if err := n.hub.Register(s.client); err != nil {
		s.CloseNow(closeGoingAway, "server shutting down")
		return false
	}
	s.started.Store(true)
	return true
}

// deliverOffline queues the direct messages the store kept for the user
// while it had no connection, right after the welcome (SPEC §14). Each goes
// to one connection: the store hands it out once. What a connection that
// closed meanwhile could not take is kept for the next one.
func (s *Session) deliverOffline(ctx context.Context) {
	a := s.node.archive
	ds := a.takeDirects(ctx, s.client.User, s.node.cfg.MaxQueueBytes)
	for i, d := range ds {
		d.Type, d.Offline = "direct", true
		if !s.client.EnqueueReply(protocol.MustEncode(d)) {
			for _, rest := range ds[i:] {
				_ = a.saveDirect(ctx, rest)
			}
			return
		}
	}
}

// WebSocket close codes the session uses (RFC 6455 §7.4.1); an SSE stream
// ends with the same codes in its close event.
const (
	closeGoingAway     = 1001
	closeInternalError = 1011
	closeTryAgainLater = 1013
)

// HandleFrame runs each newline-separated command of a frame in order. The
// transport has checked the frame's size and encoding. Only the session's
// command goroutine may call it.
func (s *Session) HandleFrame(data []byte) {
	s.cmdMu.Lock()
	defer s.cmdMu.Unlock()
	for line := range protocol.Lines(data) {
		s.handleCommand(line)
	}
}

// End ends the session once the transport is done with it: it leaves its
// rooms (members get "left"), presence and the Hub. The transport must no
// longer call HandleFrame; commands still in the inbox are dropped. The
// transport's writer must have finished with the outbox, or must finish
// once it is closed (End closes it): End does not wait for the socket.
func (s *Session) End() {
	s.ended.Do(s.end)
}

func (s *Session) end() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.inbox.stop()
	s.client.Close(hub.CloseRequest{}) // the peer is gone: a writer finishes the socket
	n := s.node
	n.hub.Unregister(s.client)
	ctx, cancel := brokerContext(context.Background())
	defer cancel()
	for room := range s.rooms {
		s.leaveRoom(ctx, room)
	}
	if err := n.broker.Disconnect(ctx, s.presence); err != nil {
		logx.Errorf("session %s: presence: %v", s.client.ID, err)
	}
	if s.userSubscribed {
		if err := n.subs.release(ctx, broker.User(s.client.User)); err != nil {
			logx.Errorf("session %s: unsubscribe user: %v", s.client.ID, err)
		}
	}
}

// Finish removes an ended session from the node once its transport has
// closed what carried it; shutdown waits for every session to finish.
func (s *Session) Finish() {
	n := s.node
	n.mu.Lock()
	delete(n.sessions, s.client.ID)
	n.mu.Unlock()
	n.Release(s.client.User)
	n.wg.Done()
}

// Submit queues a frame of commands that arrived over HTTP, to run in
// order after those queued before it, and reports whether the session
// takes them (false once it has ended).
func (s *Session) Submit(frame []byte) bool {
	return s.key != "" && s.inbox.push(func() { s.HandleFrame(frame) }, s.runInbox)
}

// runInbox runs the inbox's frames in a goroutine that ends when the
// inbox is empty (most sessions are idle: they hold no goroutine for it).
func (s *Session) runInbox() {
	pprof.SetGoroutineLabels(labelsCommands)
	defer func() {
		if p := recover(); p != nil {
			logx.Errorf("session %s: panic: %v", s.client.ID, p)
			s.CloseNow(closeInternalError, "internal error")
			s.inbox.abandon()
		}
	}()
	for {
		op, ok := s.inbox.next()
		if !ok {
			return
		}
		op()
	}
}

// inbox holds what a session runs besides its transport's frames (the
// frames of an HTTP-commanded session, the admin API's joins and
// removals), in arrival order, for one runner at a time.
type inbox struct {
	mu      sync.Mutex
	ops     []func()
	running bool
	stopped bool
	idle    *sync.Cond // signalled when the runner ends; made by stop
}

// maxInboxFrames bounds the frames waiting: a client that posts faster than
// its commands run is refused (429) rather than queued without end.
const maxInboxFrames = 64

func (q *inbox) push(op func(), run func()) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped || len(q.ops) >= maxInboxFrames {
		return false
	}
	q.ops = append(q.ops, op)
	if !q.running {
		q.running = true
		go run()
	}
	return true
}

// next hands the runner the next operation, or ends its run.
func (q *inbox) next() (func(), bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.ops) == 0 || q.stopped {
		q.ops = nil
		q.running = false
		if q.idle != nil {
			q.idle.Broadcast()
		}
		return nil, false
	}
	frame := q.ops[0]
	q.ops[0] = nil
	q.ops = q.ops[1:]
	return frame, true
}

// abandon ends a run that panicked.
func (q *inbox) abandon() {
	q.mu.Lock()
	q.running = false
	if q.idle != nil {
		q.idle.Broadcast()
	}
	q.mu.Unlock()
}

// stop refuses further frames and waits for a running command to finish,
// so that End owns the session's rooms.
func (q *inbox) stop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopped = true
	if q.idle == nil {
		q.idle = sync.NewCond(&q.mu)
	}
	for q.running {
		q.idle.Wait()
	}
}

// CheckKey reports whether key is the session's command key, in constant time.
func checkKey(hash, key string) bool {
	if hash == "" || key == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(hash), []byte(keyHash(key))) == 1
}

// Package redisbroker is the broker for any number of replicas sharing one
// Redis: room publishes are Lua scripts (seq, history, idempotency key and
// PUBLISH in one step), deliveries come over one multiplexed pub/sub
// connection per node, and presence lives in sorted sets scored by expiry
// that each node refreshes for its own connections, with a per-room index
// of users kept by scripts so that a join, a leave or a page of members
// costs O(log N) in the room's size.
package redisbroker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"

	"github.com/redis/go-redis/v9"
	"github.com/zeromicro/go-zero/core/logx"
)

// Options are the broker's settings beyond broker.Options.
type Options struct {
	broker.Options
	// Mode is how Redis is deployed: ModeSingle (Addr), ModeSentinel
	// (MasterName, SentinelAddrs) or ModeCluster (Addrs).
	Mode          string
	Addr          string
	MasterName    string
	SentinelAddrs []string
	Addrs         []string
	Password      string
	DB            int
	Prefix        string // key and channel prefix
	Node          string // this node's id, for its probe channel
	// MinReplicaAcks (sentinel and cluster modes): a publish is
	// acknowledged once this many replicas hold it (WAIT); 0 trades that
	// for availability. Redis replicates asynchronously: without it a
	// failover can lose an acknowledged message.
	MinReplicaAcks int
	// ReplicaAckTimeout bounds the WAIT; 0: 1s.
	ReplicaAckTimeout time.Duration

	// ProbeInterval is how often the node publishes a probe to itself to
	// prove its subscription still receives; 0: 5s.
	ProbeInterval time.Duration
}

// Broker is one node's Redis broker.
type Broker struct {
	opts    Options
	rdb     redis.UniversalClient
	handler broker.Handler
	prefix  string
	started time.Time // when the node started, for Nodes

	// roomTraffic counts what arrived on room channels: a node receives
	// its rooms' traffic only (checked by the cluster tests).
	roomTraffic atomic.Int64

	mu       sync.Mutex
	pubsub   *redis.PubSub
	shards   map[int]*redis.PubSub   // cluster mode: a sharded pub/sub connection per partition with members here
	channels map[string]broker.Topic // subscribed channel -> topic
	waiters  map[string][]chan struct{}
	rooms    map[string]*roomState // subscribed rooms: what was delivered
	conns    map[string]broker.Conn
	joins    map[string]map[string]broker.Conn // room -> client -> conn
	probed   time.Time                         // when the last probe came back

	stop chan struct{}
	wg   sync.WaitGroup
}

// roomState is what this node delivered of a room, for gap detection.
type roomState struct {
	epoch   string
	lastSeq int64
}

// New connects to Redis and starts the node's subscriber, presence refresh
// and probe. It does not fail when Redis is down: it keeps retrying.
func New(opts Options, handler broker.Handler) (*Broker, error) {
	opts.Options = opts.Options.WithDefaults()
	if opts.Prefix == "" {
		opts.Prefix = "chat"
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 5 * time.Second
	}
	if opts.ReplicaAckTimeout <= 0 {
		opts.ReplicaAckTimeout = time.Second
	}
	rdb, err := newClient(opts)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		opts:     opts,
		rdb:      rdb,
		handler:  handler,
		prefix:   opts.Prefix + ":",
		channels: make(map[string]broker.Topic),
		shards:   make(map[int]*redis.PubSub),
		waiters:  make(map[string][]chan struct{}),
		rooms:    make(map[string]*roomState),
		conns:    make(map[string]broker.Conn),
		joins:    make(map[string]map[string]broker.Conn),
		probed:   time.Now(),
		started:  time.Now(),
		stop:     make(chan struct{}),
	}
	b.channels[b.channel(broker.BroadcastTopic)] = broker.BroadcastTopic
	b.channels[b.probeChannel()] = broker.Topic{}
	// A broadcast made once New returned reaches this node: New waits for
	// the subscription, as Subscribe does, but only so long (Redis may be
	// down; the subscriber keeps trying).
	subscribed := make(chan struct{})
	b.waiters[b.channel(broker.BroadcastTopic)] = []chan struct{}{subscribed}
	b.pubsub = b.rdb.Subscribe(context.Background(), b.channelList()...)
	b.wg.Add(3)
	go b.receive(b.pubsub)
	go b.refreshLoop()
	go b.probeLoop()
	select {
	case <-subscribed:
	case <-time.After(2 * time.Second):
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = b.announce(ctx) // at once, so that /api/cluster lists a node that just started; the refresh repeats it
	return b, nil
}

// The modes of Options.Mode.
const (
	ModeSingle   = "single"
	ModeSentinel = "sentinel"
	ModeCluster  = "cluster"
)

// newClient makes the go-redis client of the mode: each is a
// redis.UniversalClient, which is all the broker uses.
func newClient(opts Options) (redis.UniversalClient, error) {
	const timeout = 2 * time.Second
	switch opts.Mode {
	case "", ModeSingle:
		return redis.NewClient(&redis.Options{
			Addr: opts.Addr, Password: opts.Password, DB: opts.DB,
			DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout,
			MaxRetries: 1,
		}), nil
	case ModeSentinel:
		if opts.MasterName == "" || len(opts.SentinelAddrs) == 0 {
			return nil, errors.New("Redis.Mode sentinel needs Redis.MasterName and Redis.SentinelAddrs")
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: opts.MasterName, SentinelAddrs: opts.SentinelAddrs,
			Password: opts.Password, DB: opts.DB,
			DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout,
			MaxRetries: 1,
		}), nil
	case ModeCluster:
		if len(opts.Addrs) == 0 {
			return nil, errors.New("Redis.Mode cluster needs Redis.Addrs")
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: opts.Addrs, Password: opts.Password,
			DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout,
			MaxRetries: 1,
			// go-redis refreshes its slot map only on MOVED or every 60s by
			// default: after a failover it would dial the dead master for
			// up to a minute (redis/go-redis#3979).
			ClusterStateReloadInterval: time.Second,
		}), nil
	default:
		return nil, fmt.Errorf("Redis.Mode: %q is not a mode; use %q, %q or %q", opts.Mode, ModeSingle, ModeSentinel, ModeCluster)
	}
}

// Keys. Room keys share a {room} hash tag so that a script's keys live in
// one slot of a Redis Cluster.
//
// In cluster mode the tag is the room's partition, {p0} to {p15}, and
// the room's name follows it: a partition's rooms share a slot, so that the
// publish script can also mark the partition's unstored set and SPUBLISH
// on the room's shard channel (both in the slot), and a node needs one
// sharded pub/sub connection per partition it has members in, not one per
// room.
func (b *Broker) roomBase(kind, room string) string {
	if b.sharded() {
		return b.prefix + kind + ":{p" + strconv.Itoa(partition(room)) + "}:" + room
	}
	return b.prefix + kind + ":{" + room + "}"
}

// clusterPartitions is how many slots (and shard channels' connections
// per node at most) a cluster's rooms spread over: more than any cluster
// here has masters, few enough to claim each every second.
const clusterPartitions = 16

// PartitionTag is the hash tag of a room's keys and shard channel in
// cluster mode, e.g. "{p7}": a key named by it alone is in the room's slot.
func PartitionTag(room string) string { return "{p" + strconv.Itoa(partition(room)) + "}" }

func partition(room string) int { return int(crc32.ChecksumIEEE([]byte(room)) % clusterPartitions) }

// sharded reports whether rooms use hash-tagged partitions and sharded
// pub/sub (cluster mode).
func (b *Broker) sharded() bool { return b.opts.Mode == ModeCluster }

func (b *Broker) metaKey(room string) string { return b.roomBase("room", room) + ":meta" }
func (b *Broker) histKey(room string) string { return b.roomBase("room", room) + ":history" }
func (b *Broker) idemKey(room, from, key string) string {
	return b.roomBase("room", room) + ":key:" + strconv.Itoa(len(from)) + ":" + from + ":" + key
}

// A room's presence keys (see presenceLib): its clients by expiry, their
// users, and the index of its users with their connection counts.
func (b *Broker) roomPresenceKey(room string) string { return b.roomBase("presence:room", room) }
func (b *Broker) roomUsersKey(room string) string {
	return b.roomBase("presence:room", room) + ":users"
}
func (b *Broker) roomCountsKey(room string) string {
	return b.roomBase("presence:room", room) + ":counts"
}
func (b *Broker) roomIndexKey(room string) string {
	return b.roomBase("presence:room", room) + ":index"
}

// roomPresenceKeys are the KEYS of the presence scripts, in presenceLib's order.
func (b *Broker) roomPresenceKeys(room string) []string {
	return []string{b.roomPresenceKey(room), b.roomUsersKey(room), b.roomCountsKey(room), b.roomIndexKey(room)}
}

func (b *Broker) userPresenceKey(user string) string {
	return b.prefix + "presence:user:{" + user + "}"
}
func (b *Broker) roomsKey() string { return b.prefix + "presence:rooms" }

// grantsKey holds the users granted a private room (SPEC §13).
func (b *Broker) grantsKey(room string) string { return b.roomBase("room", room) + ":grants" }

// nodesKey lists the live nodes, scored by expiry; nodeKey holds a
// node's announcement; usersKey lists users with a connection, scored by
// the expiry of their latest (a superset: Users checks each).
func (b *Broker) nodesKey() string           { return b.prefix + "nodes" }
func (b *Broker) nodeKey(node string) string { return b.prefix + "node:" + node }
func (b *Broker) usersKey() string           { return b.prefix + "presence:users" }

// unstoredKey lists the rooms with messages not known to be in the
// store, scored by when they are due (ClaimUnstored).
// In cluster mode each partition has its own, in its slot.
func (b *Broker) unstoredKey(room string) string {
	if b.sharded() {
		return b.partitionUnstoredKey(partition(room))
	}
	return b.prefix + "store:unstored"
}

func (b *Broker) partitionUnstoredKey(p int) string {
	return b.prefix + "store:unstored:{p" + strconv.Itoa(p) + "}"
}

// unstoredKeys are every unstored set, for the sweepers' claims.
func (b *Broker) unstoredKeys() []string {
	if !b.sharded() {
		return []string{b.unstoredKey("")}
	}
	keys := make([]string, clusterPartitions)
	for p := range keys {
		keys[p] = b.partitionUnstoredKey(p)
	}
	return keys
}

// sessionKey holds a session's node and key hash (Session).
func (b *Broker) sessionKey(client string) string { return b.prefix + "session:" + client }

// channel names a topic's pub/sub channel. Channels are only ever
// SUBSCRIBEd, never PSUBSCRIBEd, so no room name acts as a pattern.
func (b *Broker) channel(t broker.Topic) string {
	switch t.Kind {
	case broker.TopicRoom:
		if b.sharded() {
			return b.roomBase("ch:room", t.Name) // a shard channel, in the room's slot
		}
		return b.prefix + "ch:room:" + t.Name
	case broker.TopicUser:
		return b.prefix + "ch:user:" + t.Name
	case broker.TopicNode:
		return b.prefix + "ch:node:" + t.Name
	default:
		return b.prefix + "ch:all"
	}
}

func (b *Broker) probeChannel() string { return b.prefix + "ch:probe:" + b.opts.Node }

// channelList lists the channels of the classic pub/sub connection (shard
// channels have their own).
func (b *Broker) channelList() []string {
	list := make([]string, 0, len(b.channels))
	for ch, t := range b.channels {
		if !b.shardedTopic(t) {
			list = append(list, ch)
		}
	}
	return list
}

func unavailable(op string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%s: %w: %v", op, broker.ErrUnavailable, err)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Publish runs the publish script.
func (b *Broker) Publish(ctx context.Context, p broker.Publication) (protocol.Message, error) {
	ts := time.Now().UnixMilli()
	tail := fmt.Sprintf(`"id":%s,"from":%s,"text":%s,"ts":%d`, jsonString(p.ID), jsonString(p.From), jsonString(p.Text), ts)
	idem := ""
	if p.Key != "" {
		idem = b.idemKey(p.Room, p.From, p.Key)
	}
	// No json.Marshal escaping of HTML here: protocol.Encode does not
	// escape either, and both brokers must send the same bytes.
	tail = unescapeHTML(tail)
	// A key the script does not use is given as the meta key: a Redis
	// Cluster routes a script by its keys, which must share one slot.
	meta := b.metaKey(p.Room)
	if idem == "" {
		idem = meta
	}
	unstored := meta
	if b.opts.Heads != nil {
		unstored = b.unstoredKey(p.Room)
	}
	publish := "PUBLISH"
	if b.sharded() {
		publish = "SPUBLISH"
	}
	for seeded := false; ; seeded = true {
		raw, err := b.evalPublish(ctx,
			[]string{meta, b.histKey(p.Room), idem, unstored},
			unescapeHTML(jsonString(p.Room)), tail, broker.NewEpoch(), b.opts.HistorySize,
			b.opts.HistoryTTL.Milliseconds(), b.opts.KeyTTL.Milliseconds(), b.channel(broker.Room(p.Room)),
			time.Now().Add(b.opts.StoreDelay).UnixMilli(), p.Room, publish,
		)
		if err != nil {
			return protocol.Message{}, unavailable("publish to "+p.Room, err)
		}
		if raw == noHead && !seeded {
			if err := b.seed(ctx, p.Room); err != nil {
				return protocol.Message{}, err
			}
			continue
		}
		var msg protocol.Message
		if err := json.Unmarshal([]byte(raw), &msg); err != nil {
			return protocol.Message{}, fmt.Errorf("publish to %s: decode %q: %w", p.Room, raw, err)
		}
		return msg, nil
	}
}

// replicated reports whether a publish must wait for replicas (WAIT):
// MinReplicaAcks in sentinel or cluster mode.
func (b *Broker) replicated() bool {
	return b.opts.MinReplicaAcks > 0 && (b.opts.Mode == ModeSentinel || b.opts.Mode == ModeCluster)
}

// evalPublish runs the publish script. When replicas must confirm, WAIT
// follows the script in one pipeline, so on the same connection: WAIT
// counts the replicas that have that connection's writes. Fewer than
// MinReplicaAcks within ReplicaAckTimeout is ErrUnavailable: the outcome is
// unknown (the message is published, and a failover may still lose it), so
// it is not acknowledged, and a retry with the same key is safe.
//
// The PUBLISH stays in the script, before the WAIT: publishing only after
// WAIT would let two nodes' messages reach the channel out of seq order,
// and under load every such reorder becomes a gap fill (or, past history,
// a resync). The price: a member may see a message that was answered
// unavailable and that a failover then loses (docs/design.md).
func (b *Broker) evalPublish(ctx context.Context, keys []string, args ...any) (string, error) {
	if !b.replicated() {
		return publishScript.Run(ctx, b.rdb, keys, args...).Text()
	}
	var c redis.Cmdable = b.rdb
	if cc, ok := b.rdb.(*redis.ClusterClient); ok {
		master, err := cc.MasterForKey(ctx, keys[0]) // the room's shard: WAIT must reach it too
		if err != nil {
			return "", err
		}
		c = master
	}
	for loaded := false; ; loaded = true {
		pipe := c.Pipeline()
		eval := pipe.EvalSha(ctx, publishScript.Hash(), keys, args...)
		wait := pipe.Do(ctx, "WAIT", b.opts.MinReplicaAcks, b.opts.ReplicaAckTimeout.Milliseconds())
		_, _ = pipe.Exec(ctx)
		if err := eval.Err(); err != nil {
			if !loaded && redis.HasErrorPrefix(err, "NOSCRIPT") {
				if err := publishScript.Load(ctx, c).Err(); err != nil {
					return "", err
				}
				continue
			}
			return "", err
		}
		raw, err := eval.Text()
		if err != nil || raw == noHead {
			return raw, err // no write: nothing to wait for
		}
		acks, err := wait.Int()
		if err != nil {
			return "", fmt.Errorf("wait for replicas: %w", err)
		}
		if acks < b.opts.MinReplicaAcks {
			return "", fmt.Errorf("%d of %d replicas confirmed within %v", acks, b.opts.MinReplicaAcks, b.opts.ReplicaAckTimeout)
		}
		return raw, nil
	}
}

// noHead is the scripts' answer for a room without a sequence when the
// store must start it.
const noHead = "!nohead"

// seed starts a room's sequence at the store's head (Options.Heads).
func (b *Broker) seed(ctx context.Context, room string) error {
	head, err := b.opts.Heads(ctx, room)
	if err != nil {
		return fmt.Errorf("head of %s: %w: %v", room, broker.ErrUnavailable, err)
	}
	if head.Epoch == "" {
		head.Epoch = broker.NewEpoch()
	}
	err = seedScript.Run(ctx, b.rdb, []string{b.metaKey(room), b.histKey(room)},
		head.Epoch, head.Seq, b.opts.HistoryTTL.Milliseconds()).Err()
	if err != nil {
		return unavailable("seed "+room, err)
	}
	return nil
}

// unescapeHTML undoes encoding/json's \u003c, \u003e and \u0026.
func unescapeHTML(s string) string {
	if !strings.Contains(s, `\u00`) {
		return s
	}
	return strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&").Replace(s)
}

// History runs the history script and filters in Go (history is short).
func (b *Broker) History(ctx context.Context, room string, q broker.HistoryQuery) (broker.History, error) {
	durable := ""
	if b.opts.Heads != nil {
		durable = "1"
	}
	var res []any
	for seeded := false; ; seeded = true {
		raw, err := historyScript.Run(ctx, b.rdb, []string{b.metaKey(room), b.histKey(room)},
			broker.NewEpoch(), b.opts.HistoryTTL.Milliseconds(), durable).Result()
		if err != nil {
			return broker.History{}, unavailable("history of "+room, err)
		}
		if raw == noHead && !seeded {
			if err := b.seed(ctx, room); err != nil {
				return broker.History{}, err
			}
			continue
		}
		res, _ = raw.([]any)
		if len(res) != 3 {
			return broker.History{}, unavailable("history of "+room, fmt.Errorf("unexpected answer %v", raw))
		}
		break
	}
	h := broker.History{}
	h.Epoch, _ = res[0].(string)
	seqText, _ := res[1].(string)
	h.Seq, _ = strconv.ParseInt(seqText, 10, 64)
	items, _ := res[2].([]any)
	for _, item := range items {
		s, _ := item.(string)
		var m protocol.Message
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return broker.History{}, fmt.Errorf("history of %s: decode: %w", room, err)
		}
		if (q.After == 0 || m.Seq > q.After) && (q.Before == 0 || m.Seq < q.Before) {
			h.Messages = append(h.Messages, m)
		}
	}
	if q.Limit > 0 && len(h.Messages) > q.Limit {
		h.Messages = h.Messages[len(h.Messages)-q.Limit:]
	}
	return h, nil
}

// ClaimUnstored runs the claim script, then reads each room's head and
// stored mark.
func (b *Broker) ClaimUnstored(ctx context.Context, lease time.Duration, limit int) ([]broker.Unstored, error) {
	now := time.Now()
	token := now.Add(lease).UnixMilli()
	var rooms []string
	for _, key := range b.unstoredKeys() {
		claimed, err := claimScript.Run(ctx, b.rdb, []string{key}, now.UnixMilli(), token, limit-len(rooms)).StringSlice()
		if err != nil {
			return nil, unavailable("claim unstored rooms", err)
		}
		if rooms = append(rooms, claimed...); len(rooms) >= limit {
			break
		}
	}
	if len(rooms) == 0 {
		return nil, nil
	}
	pipe := b.rdb.Pipeline()
	heads := make([]*redis.SliceCmd, len(rooms))
	for i, room := range rooms {
		heads[i] = pipe.HMGet(ctx, b.metaKey(room), "epoch", "seq", "stored")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, unavailable("read unstored rooms", err)
	}
	out := make([]broker.Unstored, len(rooms))
	for i, room := range rooms {
		u := broker.Unstored{Room: room, Claim: token}
		vals := heads[i].Val()
		u.Epoch, _ = vals[0].(string)
		u.Seq = parseInt(vals[1])
		u.Stored = parseInt(vals[2])
		out[i] = u
	}
	return out, nil
}

func parseInt(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// MarkStored moves the room's stored mark, then releases the claim: two
// scripts, each on one key's slot.
func (b *Broker) MarkStored(ctx context.Context, u broker.Unstored) error {
	if u.Epoch != "" {
		if err := storedScript.Run(ctx, b.rdb, []string{b.metaKey(u.Room)}, u.Epoch, u.Seq).Err(); err != nil {
			return unavailable("mark "+u.Room+" stored", err)
		}
	}
	if err := releaseScript.Run(ctx, b.rdb, []string{b.unstoredKey(u.Room)}, u.Room, u.Claim).Err(); err != nil {
		return unavailable("release "+u.Room, err)
	}
	return nil
}

// head reads a room's epoch and seq without creating anything.
func (b *Broker) head(ctx context.Context, room string) (string, int64, error) {
	vals, err := b.rdb.HMGet(ctx, b.metaKey(room), "epoch", "seq").Result()
	if err != nil {
		return "", 0, err
	}
	epoch, _ := vals[0].(string)
	seqText, _ := vals[1].(string)
	seq, _ := strconv.ParseInt(seqText, 10, 64)
	return epoch, seq, nil
}

// Subscribe subscribes the node's pub/sub connection and waits for Redis to
// confirm it. For a room it then records the room's head, from which gaps
// are measured.
func (b *Broker) Subscribe(ctx context.Context, t broker.Topic) error {
	ch := b.channel(t)
	done := make(chan struct{})
	b.mu.Lock()
	b.channels[ch] = t
	b.waiters[ch] = append(b.waiters[ch], done)
	ps := b.pubsub
	var err error
	if b.shardedTopic(t) {
		err = b.shardSubscribeLocked(ctx, t.Name, ch)
	}
	b.mu.Unlock()
	if !b.shardedTopic(t) {
		err = ps.Subscribe(ctx, ch)
	}
	if err != nil {
		b.dropWaiter(ch, done)
		return unavailable("subscribe "+ch, err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.dropWaiter(ch, done)
		return unavailable("subscribe "+ch, ctx.Err())
	}
	if t.Kind == broker.TopicRoom {
		epoch, seq, err := b.head(ctx, t.Name)
		if err != nil {
			return unavailable("subscribe "+ch, err)
		}
		b.mu.Lock()
		if _, ok := b.rooms[t.Name]; !ok {
			b.rooms[t.Name] = &roomState{epoch: epoch, lastSeq: seq}
		}
		b.mu.Unlock()
	}
	return nil
}

// publish is a classic PUBLISH. In a cluster go-redis sends a PUBLISH to
// any node, which passes it to the others over the cluster bus; two
// publications sent through two nodes can then arrive in either order. So
// a channel's publications all go through one node: the master of the
// channel name's slot.
func (b *Broker) publish(ctx context.Context, ch, msg string) error {
	if cc, ok := b.rdb.(*redis.ClusterClient); ok {
		master, err := cc.MasterForKey(ctx, ch)
		if err != nil {
			return err
		}
		return master.Publish(ctx, ch, msg).Err()
	}
	return b.rdb.Publish(ctx, ch, msg).Err()
}

// shardedTopic reports whether t's channel is a shard channel: a room's,
// in cluster mode (SPEC §15). User, node and broadcast topics stay on
// classic pub/sub, which a cluster carries to every node.
func (b *Broker) shardedTopic(t broker.Topic) bool { return b.sharded() && t.Kind == broker.TopicRoom }

// shardSubscribeLocked subscribes a room's shard channel on its
// partition's sharded pub/sub connection, which it makes on the
// partition's first room: made with its first channel, the connection goes
// to the master of that slot (and after a failover, to the new one, with
// every channel of the partition: one slot). b.mu is held.
func (b *Broker) shardSubscribeLocked(ctx context.Context, room, ch string) error {
	p := partition(room)
	if ps := b.shards[p]; ps != nil {
		return ps.SSubscribe(ctx, ch)
	}
	ps := b.rdb.SSubscribe(ctx, ch)
	b.shards[p] = ps
	b.wg.Add(1)
	go b.receive(ps)
	return nil
}

func (b *Broker) dropWaiter(ch string, done chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	list := b.waiters[ch]
	for i, w := range list {
		if w == done {
			b.waiters[ch] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
}

// Unsubscribe stops the topic's deliveries to this node.
func (b *Broker) Unsubscribe(ctx context.Context, t broker.Topic) error {
	ch := b.channel(t)
	b.mu.Lock()
	delete(b.channels, ch)
	if t.Kind == broker.TopicRoom {
		delete(b.rooms, t.Name)
	}
	ps := b.pubsub
	unsubscribe := ps.Unsubscribe
	if b.shardedTopic(t) && b.shards[partition(t.Name)] != nil {
		unsubscribe = b.shards[partition(t.Name)].SUnsubscribe
	}
	b.mu.Unlock()
	if err := unsubscribe(ctx, ch); err != nil {
		return unavailable("unsubscribe "+ch, err)
	}
	return nil
}

// Emit publishes a best-effort event: "E" + exclude + "\n" + payload, "K"
// for a kick, "P+" / "P-" + user for a user who joined or left a room, or
// "C" + session + "\n" + frame for a session's commands.
func (b *Broker) Emit(ctx context.Context, d broker.Delivery) error {
	var env string
	switch d.Kind {
	case broker.KindKick:
		env = "K" + d.Client
	case broker.KindSubscribe:
		env = "S" + d.Room
	case broker.KindUnsubscribe:
		env = "U" + d.Room
	case broker.KindPresence:
		env = "P-" + d.User
		if d.Joined {
			env = "P+" + d.User
		}
	case broker.KindCommand:
		env = "C" + d.Client + "\n" + string(d.Payload)
	case broker.KindEvent:
		if d.Topic.Kind == broker.TopicNode {
			env = "E" + d.Client + "\n" + string(d.Payload) // to one connection: Client rides where Exclude does
		} else {
			env = "E" + d.Exclude + "\n" + string(d.Payload)
		}
	default:
		return fmt.Errorf("emit: kind %d is not emitted", d.Kind)
	}
	publish := b.publish
	if b.shardedTopic(d.Topic) {
		publish = func(ctx context.Context, ch, msg string) error { return b.rdb.SPublish(ctx, ch, msg).Err() }
	}
	if err := publish(ctx, b.channel(d.Topic), env); err != nil {
		return unavailable("emit to "+b.channel(d.Topic), err)
	}
	return nil
}

// receive delivers what arrives on the pub/sub connection. go-redis
// reconnects and resubscribes by itself; each "subscribe" confirmation
// (first or after a reconnect) makes the node check the room for missed
// publications.
func (b *Broker) receive(ps *redis.PubSub) {
	defer b.wg.Done()
	for item := range ps.ChannelWithSubscriptions(redis.WithChannelSize(8192), redis.WithChannelHealthCheckInterval(3*time.Second)) {
		switch m := item.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" && m.Kind != "ssubscribe" {
				continue
			}
			b.mu.Lock()
			waiters := b.waiters[m.Channel]
			delete(b.waiters, m.Channel)
			t, known := b.channels[m.Channel]
			b.mu.Unlock()
			for _, w := range waiters {
				close(w)
			}
			if known && t.Kind == broker.TopicRoom && len(waiters) == 0 {
				b.catchUp(t.Name, 0, "")
			}
		case *redis.Message:
			if strings.HasPrefix(m.Channel, b.prefix+"ch:room:") {
				b.roomTraffic.Add(1)
			}
			b.dispatch(m)
		}
	}
}

func (b *Broker) dispatch(m *redis.Message) {
	if m.Channel == b.probeChannel() {
		b.mu.Lock()
		b.probed = time.Now()
		b.mu.Unlock()
		return
	}
	b.mu.Lock()
	t, ok := b.channels[m.Channel]
	b.mu.Unlock()
	if !ok || len(m.Payload) == 0 {
		return
	}
	switch m.Payload[0] {
	case 'M':
		payload := []byte(m.Payload[1:])
		var msg protocol.Message
		if err := json.Unmarshal(payload, &msg); err != nil {
			logx.Errorf("redis broker: bad message on %s: %v", m.Channel, err)
			return
		}
		b.catchUp(msg.Room, msg.Seq, msg.Epoch)
		b.deliverMessage(msg, payload)
	case 'E':
		rest := m.Payload[1:]
		i := strings.IndexByte(rest, '\n')
		if i < 0 {
			return
		}
		d := broker.Delivery{Kind: broker.KindEvent, Topic: t, Payload: []byte(rest[i+1:]), Exclude: rest[:i]}
		if t.Kind == broker.TopicNode {
			d.Client, d.Exclude = d.Exclude, ""
		}
		b.handler(d)
	case 'C':
		rest := m.Payload[1:]
		i := strings.IndexByte(rest, '\n')
		if i < 0 {
			return
		}
		b.handler(broker.Delivery{Kind: broker.KindCommand, Topic: t, Client: rest[:i], Payload: []byte(rest[i+1:])})
	case 'K':
		b.handler(broker.Delivery{Kind: broker.KindKick, Topic: t, Client: m.Payload[1:]})
	case 'S':
		b.handler(broker.Delivery{Kind: broker.KindSubscribe, Topic: t, Room: m.Payload[1:]})
	case 'U':
		b.handler(broker.Delivery{Kind: broker.KindUnsubscribe, Topic: t, Room: m.Payload[1:]})
	case 'P':
		if len(m.Payload) < 2 {
			return
		}
		b.handler(broker.Delivery{Kind: broker.KindPresence, Topic: t, User: m.Payload[2:], Joined: m.Payload[1] == '+'})
	}
}

// deliverMessage hands a room message to the node and records its seq. A
// message a gap fill already delivered (it was published while the fill
// read history, and then arrived live) is not handed over again.
func (b *Broker) deliverMessage(msg protocol.Message, payload []byte) {
	b.mu.Lock()
	if st := b.rooms[msg.Room]; st != nil {
		switch {
		case st.epoch != msg.Epoch:
			st.epoch, st.lastSeq = msg.Epoch, msg.Seq
		case msg.Seq <= st.lastSeq:
			b.mu.Unlock()
			return
		default:
			st.lastSeq = msg.Seq
		}
	}
	b.mu.Unlock()
	b.handler(broker.Delivery{Kind: broker.KindMessage, Topic: broker.Room(msg.Room), Message: msg, Payload: payload})
}

// catchUp fills a gap before a message of seq arrives (seq 0: after a
// resubscribe, up to the room's head) from history, so members still see
// every message once and in order. What history no longer holds becomes a
// resync. It runs on the receive goroutine, which keeps the order.
func (b *Broker) catchUp(room string, seq int64, epoch string) {
	b.mu.Lock()
	st := b.rooms[room]
	var last int64
	var known string
	if st != nil {
		last, known = st.lastSeq, st.epoch
	}
	b.mu.Unlock()
	if known == "" {
		// The room had no sequence when the node subscribed: the first
		// epoch it hears of is the one it follows from seq 0.
		known = epoch
	}
	if st == nil || (epoch != "" && epoch != known) || (seq != 0 && seq <= last+1) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := b.History(ctx, room, broker.HistoryQuery{After: last})
	if err != nil {
		logx.Errorf("redis broker: fill gap in %s after %d: %v", room, last, err)
		return
	}
	if known != "" && h.Epoch != known {
		if seq != 0 || h.Seq == 0 {
			return // the room restarted; the live message at hand, or the next, carries the new epoch
		}
		// The room restarted while the subscription was down, and what its
		// new sequence published was missed. No live message may follow,
		// so deliver that sequence from history: the Hub resyncs members
		// at its first message, whose epoch differs from theirs.
		if h, err = b.History(ctx, room, broker.HistoryQuery{}); err != nil {
			logx.Errorf("redis broker: fill %s after its restart: %v", room, err)
			return
		}
		for _, m := range h.Messages {
			b.deliverMessage(m, protocol.MustEncode(m))
		}
		return
	}
	known = h.Epoch
	upTo := h.Seq
	if seq != 0 {
		upTo = seq - 1
	}
	if upTo <= last {
		return
	}
	if len(h.Messages) == 0 || h.Messages[0].Seq != last+1 {
		// Missed messages are no longer in history: members must resync.
		b.mu.Lock()
		st.lastSeq = upTo
		b.mu.Unlock()
		resync := protocol.MustEncode(protocol.Resync{Type: "resync", Room: room, Epoch: known, Seq: upTo})
		b.handler(broker.Delivery{Kind: broker.KindResync, Topic: broker.Room(room), Payload: resync, Message: protocol.Message{Room: room, Epoch: known, Seq: upTo}})
		return
	}
	for _, m := range h.Messages {
		if m.Seq > upTo {
			break
		}
		b.deliverMessage(m, protocol.MustEncode(m))
	}
}

// go-redis logs to stderr by itself: in sentinel mode a line per new
// connection. Its lines go to logx at debug level instead.
func init() { redis.SetLogger(redisLog{}) }

type redisLog struct{}

func (redisLog) Printf(_ context.Context, format string, v ...any) {
	logx.Debugf("go-redis: "+format, v...)
}

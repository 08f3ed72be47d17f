package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"

	"github.com/redis/go-redis/v9"
	"github.com/zeromicro/go-zero/core/logx"
)

// Presence: sorted sets of client ids scored by expiry (Unix ms), since
// Redis 7.0 has no per-member expiry. Each node re-adds its own entries
// every PresenceTTL/3, which also re-creates them after Redis came back
// empty; a dead node's entries simply stop being refreshed and expire.
//
// A room's presence changes only through the scripts of scripts.go, which
// first trim the connections that expired and keep the room's index of
// users (user -> connections, and the users in byte order) in step, so
// that a join, a leave and a page of members cost O(log N) in the room's
// size N and are exact cluster-wide. A user's connections (Connect) are a
// sorted set of the user's own, read by counting the live scores.

// expiry is the score of an entry refreshed now.
func (b *Broker) expiry() int64 {
	return time.Now().Add(b.opts.PresenceTTL).UnixMilli()
}

func nowMillis() int64 { return time.Now().UnixMilli() }

func (b *Broker) Connect(ctx context.Context, c broker.Conn) error {
	b.mu.Lock()
	b.conns[c.Client] = c
	b.mu.Unlock()
	pipe := b.rdb.TxPipeline()
	if b.sharded() {
		pipe = b.rdb.Pipeline() // the keys are in several slots: no MULTI across them in a cluster
	}
	b.addConn(ctx, pipe, c)
	pipe.HIncrBy(ctx, b.nodeKey(b.opts.Node), "conns", 1) // the refresh sets it whole
	_, err := pipe.Exec(ctx)
	return wrapPresence("connect "+c.User, err)
}

// addConn records c in its user's presence, and drops the user's entries
// that expired (the key lives as long as any connection refreshes it).
func (b *Broker) addConn(ctx context.Context, pipe redis.Pipeliner, c broker.Conn) {
	key := b.userPresenceKey(c.User)
	pipe.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(nowMillis(), 10))
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(b.expiry()), Member: c.Client})
	pipe.PExpire(ctx, key, 2*b.opts.PresenceTTL)
	pipe.ZAdd(ctx, b.usersKey(), redis.Z{Score: float64(b.expiry()), Member: c.User})
	// The connection's record, for commands posted to it and messages
	// and kicks aimed at it from any node; fields joined by newlines,
	// which no name holds.
	pipe.Set(ctx, b.sessionKey(c.Client), c.Node+"\n"+c.User+"\n"+c.KeyHash, b.opts.PresenceTTL)
}

// Session reads a session's record, which lives as long as its presence.
func (b *Broker) Session(ctx context.Context, client string) (broker.Conn, bool, error) {
	v, err := b.rdb.Get(ctx, b.sessionKey(client)).Result()
	if errors.Is(err, redis.Nil) {
		return broker.Conn{}, false, nil
	}
	if err != nil {
		return broker.Conn{}, false, unavailable("session "+client, err)
	}
	f := strings.SplitN(v, "\n", 3)
	if len(f) != 3 {
		return broker.Conn{}, false, nil
	}
	return broker.Conn{Client: client, Node: f[0], User: f[1], KeyHash: f[2]}, true, nil
}

// Disconnect removes the connection and its presence in every room, each
// room's as one atomic step (the leave script).
func (b *Broker) Disconnect(ctx context.Context, c broker.Conn) error {
	b.mu.Lock()
	delete(b.conns, c.Client)
	var rooms []string
	for room, members := range b.joins {
		if _, ok := members[c.Client]; ok {
			delete(members, c.Client)
			if len(members) == 0 {
				delete(b.joins, room)
			}
			rooms = append(rooms, room)
		}
	}
	b.mu.Unlock()
	pipe := b.rdb.Pipeline()
	pipe.ZRem(ctx, b.userPresenceKey(c.User), c.Client)
	pipe.Del(ctx, b.sessionKey(c.Client))
	pipe.HIncrBy(ctx, b.nodeKey(b.opts.Node), "conns", -1)
	calls := make([]scriptCall, len(rooms))
	for i, room := range rooms {
		calls[i] = b.leaveCall(room, []broker.Conn{c})
	}
	_, err := b.execScripts(ctx, pipe, calls)
	return wrapPresence("disconnect "+c.User, err)
}

// Join runs the join script. The node records the join for its refresh
// only once Redis did: a refresh that ran the script first would take the
// user's Changed from this call.
func (b *Broker) Join(ctx context.Context, room string, c broker.Conn) (broker.RoomPresence, error) {
	pipe := b.rdb.Pipeline()
	pipe.ZAdd(ctx, b.roomsKey(), redis.Z{Score: float64(b.expiry()), Member: room})
	cmds, err := b.execScripts(ctx, pipe, []scriptCall{b.joinCall(room, []broker.Conn{c})})
	if err != nil {
		return broker.RoomPresence{}, wrapPresence("join "+room, err)
	}
	p, err := roomPresence(cmds[0])
	if err != nil {
		return broker.RoomPresence{}, fmt.Errorf("join %s: %w", room, err)
	}
	b.mu.Lock()
	members := b.joins[room]
	if members == nil {
		members = make(map[string]broker.Conn)
		b.joins[room] = members
	}
	members[c.Client] = c
	b.mu.Unlock()
	return p, nil
}

// Leave runs the leave script. The node forgets the join first, so that
// its refresh stops re-adding it.
func (b *Broker) Leave(ctx context.Context, room string, c broker.Conn) (broker.RoomPresence, error) {
	b.mu.Lock()
	if members := b.joins[room]; members != nil {
		delete(members, c.Client)
		if len(members) == 0 {
			delete(b.joins, room)
		}
	}
	b.mu.Unlock()
	call := b.leaveCall(room, []broker.Conn{c})
	cmd := call.script.Run(ctx, b.rdb, call.keys, call.args...)
	if err := cmd.Err(); err != nil {
		return broker.RoomPresence{}, wrapPresence("leave "+room, err)
	}
	p, err := roomPresence(cmd)
	if err != nil {
		return broker.RoomPresence{}, fmt.Errorf("leave %s: %w", room, err)
	}
	return p, nil
}

// joinCall runs the join script for conns, all in room.
func (b *Broker) joinCall(room string, conns []broker.Conn) scriptCall {
	args := make([]any, 0, 3+2*len(conns))
	args = append(args, nowMillis(), b.expiry(), (2 * b.opts.PresenceTTL).Milliseconds())
	for _, c := range conns {
		args = append(args, c.Client, c.User)
	}
	return scriptCall{joinScript, b.roomPresenceKeys(room), args}
}

// leaveCall runs the leave script for conns, all in room.
func (b *Broker) leaveCall(room string, conns []broker.Conn) scriptCall {
	args := make([]any, 0, 1+len(conns))
	args = append(args, nowMillis())
	for _, c := range conns {
		args = append(args, c.Client)
	}
	return scriptCall{leaveScript, b.roomPresenceKeys(room), args}
}

// roomPresence decodes the {changed, count} of the join and leave scripts
// run for one connection.
func roomPresence(cmd *redis.Cmd) (broker.RoomPresence, error) {
	res, err := cmd.Int64Slice()
	if err != nil || len(res) != 2 {
		return broker.RoomPresence{}, fmt.Errorf("decode presence %v: %v", cmd.Val(), err)
	}
	return broker.RoomPresence{Changed: res[0] == 1, Count: int(res[1])}, nil
}

// scriptCall is one run of a script in a pipeline.
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
}

// execScripts adds calls to pipe, after what the caller queued there, runs
// it in one round trip and returns the calls' commands in order, and the
// first error of any command. Calls go by SHA; Redis answers NOSCRIPT when
// it restarted and forgot a script, and such a call did nothing, so it is
// run again once the script is loaded.
func (b *Broker) execScripts(ctx context.Context, pipe redis.Pipeliner, calls []scriptCall) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(calls))
	for i, call := range calls {
		cmds[i] = call.script.EvalSha(ctx, pipe, call.keys, call.args...)
	}
	all, execErr := pipe.Exec(ctx) // errors are read per command below
	var again []int
	loaded := make(map[*redis.Script]bool)
	for i, cmd := range cmds {
		if !redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			continue
		}
		if s := calls[i].script; !loaded[s] {
			if err := s.Load(ctx, b.rdb).Err(); err != nil {
				return cmds, err
			}
			loaded[s] = true
		}
		again = append(again, i)
	}
	if len(again) > 0 {
		retry := b.rdb.Pipeline()
		for _, i := range again {
			cmds[i] = calls[i].script.EvalSha(ctx, retry, calls[i].keys, calls[i].args...)
		}
		_, _ = retry.Exec(ctx)
	}
	for _, cmd := range all {
		if err := cmd.Err(); err != nil && err != redis.Nil && !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return cmds, err
		}
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return cmds, err
		}
	}
	if execErr != nil && execErr != redis.Nil && !redis.HasErrorPrefix(execErr, "NOSCRIPT") {
		return cmds, execErr // the pipeline failed before its commands did
	}
	return cmds, nil
}

func wrapPresence(op string, err error) error {
	if err == nil {
		return nil
	}
	return unavailable(op, err)
}

// Members runs the members script: one page, and the room's count.
func (b *Broker) Members(ctx context.Context, room string, q broker.MembersQuery) (broker.MembersPage, error) {
	res, err := membersScript.Run(ctx, b.rdb, b.roomPresenceKeys(room), nowMillis(), q.After, max(q.Limit, 0)).Slice()
	if err != nil {
		return broker.MembersPage{}, unavailable("members of "+room, err)
	}
	if len(res) != 3 {
		return broker.MembersPage{}, fmt.Errorf("members of %s: decode %v", room, res)
	}
	count, _ := res[0].(int64)
	users, _ := res[1].([]any)
	conns, _ := res[2].([]any)
	if len(users) != len(conns) {
		return broker.MembersPage{}, fmt.Errorf("members of %s: %d users, %d counts", room, len(users), len(conns))
	}
	page := broker.MembersPage{Members: make([]protocol.Member, 0, len(users)), Count: int(count)}
	for i, u := range users {
		user, _ := u.(string)
		n, _ := conns[i].(string)
		connections, _ := strconv.Atoi(n)
		page.Members = append(page.Members, protocol.Member{User: user, Connections: connections})
	}
	return page, nil
}

// Rooms reads the rooms anyone joined within PresenceTTL and counts each
// one's users (trimming it), in one round trip.
func (b *Broker) Rooms(ctx context.Context) ([]broker.RoomInfo, error) {
	key := b.roomsKey()
	if err := b.rdb.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(nowMillis(), 10)).Err(); err != nil {
		return nil, unavailable("rooms", err)
	}
	names, err := b.rdb.ZRange(ctx, key, 0, -1).Result()
	if err != nil {
		return nil, unavailable("rooms", err)
	}
	pipe := b.rdb.Pipeline()
	seqs := make([]*redis.StringCmd, len(names))
	calls := make([]scriptCall, len(names))
	for i, name := range names {
		seqs[i] = pipe.HGet(ctx, b.metaKey(name), "seq")
		calls[i] = scriptCall{countScript, b.roomPresenceKeys(name), []any{nowMillis()}}
	}
	counts, err := b.execScripts(ctx, pipe, calls)
	if err != nil {
		return nil, unavailable("rooms", err)
	}
	rooms := make([]broker.RoomInfo, 0, len(names))
	for i, name := range names {
		count, _ := counts[i].Int64()
		if count == 0 {
			continue
		}
		seq, _ := seqs[i].Int64() // 0 when the room has no history
		rooms = append(rooms, broker.RoomInfo{Room: name, Members: int(count), Seq: seq})
	}
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Room < rooms[j].Room })
	return rooms, nil
}

func (b *Broker) UserConnections(ctx context.Context, user string) (int, error) {
	n, err := b.rdb.ZCount(ctx, b.userPresenceKey(user), strconv.FormatInt(nowMillis(), 10), "+inf").Result()
	if err != nil {
		return 0, unavailable("presence of "+user, err)
	}
	return int(n), nil
}

func (b *Broker) Ping(ctx context.Context) error {
	return b.rdb.Ping(ctx).Err()
}

// refreshLoop re-adds this node's presence entries before they expire.
func (b *Broker) refreshLoop() {
	defer b.wg.Done()
	ticker := time.NewTicker(b.opts.PresenceTTL / 3)
	defer ticker.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-ticker.C:
			if err := b.refresh(); err != nil {
				logx.Errorf("redis broker: refresh presence: %v", err)
			}
		}
	}
}

// refreshBatch bounds the connections of one script and the commands of
// one pipeline in a refresh.
const refreshBatch = 500

// refresh runs the join script for all of this node's connections in each
// room, a batch at a time: an entry Redis holds only gets its expiry
// moved, and one Redis lost (it came back empty) is counted again. An
// entry that left while the refresh ran may have been re-added after its
// leave; it is taken out again.
func (b *Broker) refresh() error {
	conns, joins := b.snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.PresenceTTL/3)
	defer cancel()
	var firstErr error
	keep := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	for start := 0; start < len(conns); start += refreshBatch {
		pipe := b.rdb.Pipeline()
		for _, c := range conns[start:min(start+refreshBatch, len(conns))] {
			b.addConn(ctx, pipe, c)
		}
		_, err := pipe.Exec(ctx)
		keep(err)
	}
	calls := roomCalls(joins, b.joinCall)
	for start := 0; start < len(calls); start += refreshBatch {
		pipe := b.rdb.Pipeline()
		batch := calls[start:min(start+refreshBatch, len(calls))]
		rooms := make([]redis.Z, 0, len(batch))
		for _, call := range batch {
			rooms = append(rooms, redis.Z{Score: float64(b.expiry()), Member: call.room})
		}
		pipe.ZAdd(ctx, b.roomsKey(), rooms...)
		_, err := b.execScripts(ctx, pipe, scripts(batch))
		keep(err)
	}
	keep(b.undoLeft(ctx, conns, joins))
	keep(b.announce(ctx))
	return firstErr
}

// announce records this node in the list of live nodes, with its
// connections, until the presence TTL unless refreshed.
func (b *Broker) announce(ctx context.Context) error {
	b.mu.Lock()
	conns := len(b.conns)
	b.mu.Unlock()
	pipe := b.rdb.Pipeline()
	now := nowMillis()
	pipe.ZRemRangeByScore(ctx, b.nodesKey(), "-inf", "("+strconv.FormatInt(now, 10))
	pipe.ZAdd(ctx, b.nodesKey(), redis.Z{Score: float64(b.expiry()), Member: b.opts.Node})
	pipe.HSet(ctx, b.nodeKey(b.opts.Node), "conns", conns, "started", b.started.UnixMilli())
	pipe.PExpire(ctx, b.nodeKey(b.opts.Node), b.opts.PresenceTTL)
	pipe.ZRemRangeByScore(ctx, b.usersKey(), "-inf", "("+strconv.FormatInt(now, 10))
	_, err := pipe.Exec(ctx)
	return wrapPresence("announce", err)
}

func (b *Broker) Nodes(ctx context.Context) ([]broker.NodeInfo, error) {
	ids, err := b.rdb.ZRangeByScore(ctx, b.nodesKey(), &redis.ZRangeBy{Min: strconv.FormatInt(nowMillis(), 10), Max: "+inf"}).Result()
	if err != nil || len(ids) == 0 {
		return []broker.NodeInfo{}, wrapPresence("nodes", err)
	}
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, b.nodeKey(id), "conns", "started")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, wrapPresence("nodes", err)
	}
	out := make([]broker.NodeInfo, 0, len(ids))
	for i, cmd := range cmds {
		v := cmd.Val()
		c, ok1 := v[0].(string)
		st, ok2 := v[1].(string)
		if !ok1 || !ok2 {
			continue // expired between the two reads
		}
		conns, _ := strconv.Atoi(c)
		started, _ := strconv.ParseInt(st, 10, 64)
		out = append(out, broker.NodeInfo{Node: ids[i], Connections: conns, Started: time.UnixMilli(started)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// Users counts the users of the users index that still have a live
// connection (the index keeps a user until its latest connection's
// expiry, even after it disconnected).
func (b *Broker) Users(ctx context.Context) (int, error) {
	now := strconv.FormatInt(nowMillis(), 10)
	users, err := b.rdb.ZRangeByScore(ctx, b.usersKey(), &redis.ZRangeBy{Min: now, Max: "+inf"}).Result()
	if err != nil {
		return 0, wrapPresence("users", err)
	}
	pipe := b.rdb.Pipeline()
	counts := make([]*redis.IntCmd, len(users))
	for i, u := range users {
		counts[i] = pipe.ZCount(ctx, b.userPresenceKey(u), now, "+inf")
	}
	if len(users) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, wrapPresence("users", err)
		}
	}
	n := 0
	for _, c := range counts {
		if c.Val() > 0 {
			n++
		}
	}
	return n, nil
}

// roomCall is a script call for some connections of one room.
type roomCall struct {
	room string
	scriptCall
}

// roomCalls makes the calls of script for every room's connections, at
// most refreshBatch connections each.
func roomCalls(joins map[string][]broker.Conn, call func(room string, conns []broker.Conn) scriptCall) []roomCall {
	var calls []roomCall
	for room, conns := range joins {
		for start := 0; start < len(conns); start += refreshBatch {
			calls = append(calls, roomCall{room, call(room, conns[start:min(start+refreshBatch, len(conns))])})
		}
	}
	return calls
}

func scripts(calls []roomCall) []scriptCall {
	out := make([]scriptCall, len(calls))
	for i, call := range calls {
		out[i] = call.scriptCall
	}
	return out
}

// snapshot lists this node's connections, and its connections in each room.
func (b *Broker) snapshot() ([]broker.Conn, map[string][]broker.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	conns := make([]broker.Conn, 0, len(b.conns))
	for _, c := range b.conns {
		conns = append(conns, c)
	}
	joins := make(map[string][]broker.Conn, len(b.joins))
	for room, members := range b.joins {
		for _, c := range members {
			joins[room] = append(joins[room], c)
		}
	}
	return conns, joins
}

// undoLeft removes again what a refresh re-added after it left: the
// connections and room entries of the refresh's snapshot that the node no
// longer has.
func (b *Broker) undoLeft(ctx context.Context, conns []broker.Conn, joins map[string][]broker.Conn) error {
	b.mu.Lock()
	var goneConns []broker.Conn
	for _, c := range conns {
		if _, ok := b.conns[c.Client]; !ok {
			goneConns = append(goneConns, c)
		}
	}
	gone := make(map[string][]broker.Conn)
	for room, members := range joins {
		for _, c := range members {
			if _, ok := b.joins[room][c.Client]; !ok {
				gone[room] = append(gone[room], c)
			}
		}
	}
	b.mu.Unlock()
	if len(goneConns) == 0 && len(gone) == 0 {
		return nil
	}
	pipe := b.rdb.Pipeline()
	for _, c := range goneConns {
		pipe.ZRem(ctx, b.userPresenceKey(c.User), c.Client)
	}
	_, err := b.execScripts(ctx, pipe, scripts(roomCalls(gone, b.leaveCall)))
	return err
}

// probeLoop publishes to the node's own probe channel. A subscription that
// looks healthy but no longer receives (the probe does not come back) is
// rebuilt on a new connection.
func (b *Broker) probeLoop() {
	defer b.wg.Done()
	ticker := time.NewTicker(b.opts.ProbeInterval)
	defer ticker.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-ticker.C:
		}
		b.mu.Lock()
		stale := time.Since(b.probed) > 3*b.opts.ProbeInterval
		b.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), b.opts.ProbeInterval)
		err := b.publish(ctx, b.probeChannel(), "p")
		cancel()
		if stale && err == nil {
			logx.Errorf("redis broker: subscription stopped receiving; rebuilding it")
			b.rebuild()
		}
	}
}

// rebuild replaces the pub/sub connection with a new one subscribed to every
// channel; the confirmations make every room catch up.
func (b *Broker) rebuild() {
	b.mu.Lock()
	old := b.pubsub
	b.pubsub = b.rdb.Subscribe(context.Background(), b.channelList()...)
	b.probed = time.Now()
	ps := b.pubsub
	b.mu.Unlock()
	_ = old.Close()
	b.wg.Add(1)
	go b.receive(ps)
}

// Close stops the node's goroutines and removes its presence.
func (b *Broker) Close() error {
	close(b.stop)
	b.mu.Lock()
	ps := b.pubsub
	shards := b.shards
	b.shards = map[int]*redis.PubSub{}
	conns := b.conns
	joins := b.joins
	b.conns, b.joins = map[string]broker.Conn{}, map[string]map[string]broker.Conn{}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pipe := b.rdb.Pipeline()
	for _, c := range conns {
		pipe.ZRem(ctx, b.userPresenceKey(c.User), c.Client)
		pipe.Del(ctx, b.sessionKey(c.Client))
	}
	pipe.ZRem(ctx, b.nodesKey(), b.opts.Node)
	pipe.Del(ctx, b.nodeKey(b.opts.Node))
	left := make(map[string][]broker.Conn, len(joins))
	for room, members := range joins {
		for _, c := range members {
			left[room] = append(left[room], c)
		}
	}
	_, _ = b.execScripts(ctx, pipe, scripts(roomCalls(left, b.leaveCall)))
	_ = ps.Close()
	for _, s := range shards {
		_ = s.Close()
	}
	b.wg.Wait()
	return b.rdb.Close()
}

// Grants live in a set per room, under the room's hash tag, with no TTL:
// they outlive every node and a restart of every replica (SPEC §13).
func (b *Broker) Grant(ctx context.Context, room, user string) error {
	return wrapPresence("grant "+room, b.rdb.SAdd(ctx, b.grantsKey(room), user).Err())
}

func (b *Broker) Revoke(ctx context.Context, room, user string) error {
	return wrapPresence("revoke "+room, b.rdb.SRem(ctx, b.grantsKey(room), user).Err())
}

func (b *Broker) Grants(ctx context.Context, room string) ([]string, error) {
	users, err := b.rdb.SMembers(ctx, b.grantsKey(room)).Result()
	if err != nil {
		return nil, wrapPresence("grants of "+room, err)
	}
	sort.Strings(users)
	return users, nil
}

func (b *Broker) HasGrant(ctx context.Context, room, user string) (bool, error) {
	ok, err := b.rdb.SIsMember(ctx, b.grantsKey(room), user).Result()
	return ok, wrapPresence("grant of "+room, err)
}

package redisbroker

import (
	"context"
	"sort"
	"strconv"
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
// Readers ignore (and trim) members whose score is in the past.

func (b *Broker) expiry() float64 {
	return float64(time.Now().Add(b.opts.PresenceTTL).UnixMilli())
}

func now() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

func (b *Broker) Connect(ctx context.Context, c broker.Conn) error {
	b.mu.Lock()
	b.conns[c.Client] = c
	b.mu.Unlock()
	pipe := b.rdb.TxPipeline()
	b.addConn(ctx, pipe, c)
	_, err := pipe.Exec(ctx)
	return wrapPresence("connect "+c.User, err)
}

func (b *Broker) addConn(ctx context.Context, pipe redis.Pipeliner, c broker.Conn) {
	key := b.userPresenceKey(c.User)
	pipe.ZAdd(ctx, key, redis.Z{Score: b.expiry(), Member: c.Client})
	pipe.PExpire(ctx, key, 2*b.opts.PresenceTTL)
}

// Disconnect removes the connection and its presence in every room.
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
	pipe := b.rdb.TxPipeline()
	pipe.ZRem(ctx, b.userPresenceKey(c.User), c.Client)
	for _, room := range rooms {
		b.removeJoin(ctx, pipe, room, c)
	}
	_, err := pipe.Exec(ctx)
	return wrapPresence("disconnect "+c.User, err)
}

func (b *Broker) Join(ctx context.Context, room string, c broker.Conn) error {
	b.mu.Lock()
	members := b.joins[room]
	if members == nil {
		members = make(map[string]broker.Conn)
		b.joins[room] = members
	}
	members[c.Client] = c
	b.mu.Unlock()
	pipe := b.rdb.TxPipeline()
	b.addJoin(ctx, pipe, room, c)
	_, err := pipe.Exec(ctx)
	return wrapPresence("join "+room, err)
}

func (b *Broker) addJoin(ctx context.Context, pipe redis.Pipeliner, room string, c broker.Conn) {
	exp := b.expiry()
	pipe.ZAdd(ctx, b.roomPresenceKey(room), redis.Z{Score: exp, Member: c.Client})
	pipe.HSet(ctx, b.roomUsersKey(room), c.Client, c.User)
	pipe.ZAdd(ctx, b.roomsKey(), redis.Z{Score: exp, Member: room})
	for _, key := range []string{b.roomPresenceKey(room), b.roomUsersKey(room)} {
		pipe.PExpire(ctx, key, 2*b.opts.PresenceTTL)
	}
}

// removeJoin is addJoin's inverse.
func (b *Broker) removeJoin(ctx context.Context, pipe redis.Pipeliner, room string, c broker.Conn) {
	pipe.ZRem(ctx, b.roomPresenceKey(room), c.Client)
	pipe.HDel(ctx, b.roomUsersKey(room), c.Client)
}

func (b *Broker) Leave(ctx context.Context, room string, c broker.Conn) error {
	b.mu.Lock()
	if members := b.joins[room]; members != nil {
		delete(members, c.Client)
		if len(members) == 0 {
			delete(b.joins, room)
		}
	}
	b.mu.Unlock()
	pipe := b.rdb.TxPipeline()
	b.removeJoin(ctx, pipe, room, c)
	_, err := pipe.Exec(ctx)
	return wrapPresence("leave "+room, err)
}

func wrapPresence(op string, err error) error {
	if err == nil {
		return nil
	}
	return unavailable(op, err)
}

// members reads a room's live connections' users.
func (b *Broker) members(ctx context.Context, room string) ([]protocol.Member, error) {
	key := b.roomPresenceKey(room)
	pipe := b.rdb.Pipeline()
	pipe.ZRemRangeByScore(ctx, key, "-inf", "("+now())
	ids := pipe.ZRange(ctx, key, 0, -1)
	users := pipe.HGetAll(ctx, b.roomUsersKey(room))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, unavailable("members of "+room, err)
	}
	names := users.Val()
	counts := make(map[string]int)
	for _, id := range ids.Val() {
		if user, ok := names[id]; ok {
			counts[user]++
		}
	}
	list := make([]protocol.Member, 0, len(counts))
	for user, n := range counts {
		list = append(list, protocol.Member{User: user, Connections: n})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].User < list[j].User })
	return list, nil
}

func (b *Broker) Members(ctx context.Context, room string) ([]protocol.Member, error) {
	return b.members(ctx, room)
}

func (b *Broker) Rooms(ctx context.Context) ([]broker.RoomInfo, error) {
	key := b.roomsKey()
	if err := b.rdb.ZRemRangeByScore(ctx, key, "-inf", "("+now()).Err(); err != nil {
		return nil, unavailable("rooms", err)
	}
	names, err := b.rdb.ZRange(ctx, key, 0, -1).Result()
	if err != nil {
		return nil, unavailable("rooms", err)
	}
	rooms := make([]broker.RoomInfo, 0, len(names))
	for _, name := range names {
		members, err := b.members(ctx, name)
		if err != nil {
			return nil, err
		}
		if len(members) == 0 {
			continue
		}
		_, seq, err := b.head(ctx, name)
		if err != nil {
			return nil, unavailable("rooms", err)
		}
		rooms = append(rooms, broker.RoomInfo{Room: name, Members: len(members), Seq: seq})
	}
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Room < rooms[j].Room })
	return rooms, nil
}

func (b *Broker) UserConnections(ctx context.Context, user string) (int, error) {
	n, err := b.rdb.ZCount(ctx, b.userPresenceKey(user), now(), "+inf").Result()
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

func (b *Broker) refresh() error {
	b.mu.Lock()
	conns := make([]broker.Conn, 0, len(b.conns))
	for _, c := range b.conns {
		conns = append(conns, c)
	}
	type join struct {
		room string
		c    broker.Conn
	}
	var joins []join
	for room, members := range b.joins {
		for _, c := range members {
			joins = append(joins, join{room, c})
		}
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.PresenceTTL/3)
	defer cancel()
	pipe := b.rdb.Pipeline()
	for _, c := range conns {
		b.addConn(ctx, pipe, c)
	}
	for _, j := range joins {
		b.addJoin(ctx, pipe, j.room, j.c)
	}
	_, err := pipe.Exec(ctx)
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
		err := b.rdb.Publish(ctx, b.probeChannel(), "p").Err()
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
	conns := b.conns
	joins := b.joins
	b.conns, b.joins = map[string]broker.Conn{}, map[string]map[string]broker.Conn{}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pipe := b.rdb.Pipeline()
	for _, c := range conns {
		pipe.ZRem(ctx, b.userPresenceKey(c.User), c.Client)
	}
	for room, members := range joins {
		for _, c := range members {
			b.removeJoin(ctx, pipe, room, c)
		}
	}
	_, _ = pipe.Exec(ctx)
	_ = ps.Close()
	b.wg.Wait()
	return b.rdb.Close()
}

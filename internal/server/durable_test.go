package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"
	"chat/internal/store"

	"github.com/go-sql-driver/mysql"
)

// The durable store (SPEC §14), on SQLite always and on MariaDB when
// CHAT_TEST_MYSQL names one (CI).

// storeWait bounds how long a message may take to reach the store: the
// writer's batch, or the sweepers (StoreDelay 2s, a sweep per second).
const storeWait = 15 * time.Second

// openStore opens a second handle on the test's store, to look into it.
func openStore(t *testing.T, d chattest.StoreDSN) *store.Store {
	t.Helper()
	st, err := store.Open(d.Driver, d.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// waitStored waits until the store holds every seq in 1..upTo of the room's
// epoch, and fails with what is missing.
func waitStored(t *testing.T, st *store.Store, room, epoch string, upTo int64) {
	t.Helper()
	waitStoredWithin(t, st, room, epoch, upTo, storeWait)
}

// sendMany sends count messages to room from c, pipelined in batches, and
// returns the acknowledged seqs in order.
func sendMany(t *testing.T, c *chattest.Client, room string, count int) []int64 {
	t.Helper()
	var seqs []int64
	for sent := 0; sent < count; {
		var ids []int
		for ; sent < count && len(ids) < 50; sent++ {
			ids = append(ids, c.Start("send", map[string]any{"room": room, "text": fmt.Sprintf("m%d", sent+1)}))
		}
		for _, id := range ids {
			var res protocol.SendResult
			c.ReplyWithin(id, chattest.Timeout).Decode(t, &res)
			seqs = append(seqs, res.Seq)
		}
	}
	return seqs
}

func fastSender(c *config.Config) {
	c.Chat.RateLimit, c.Chat.RateBurst = 100000, 100000
}

// pageBack reads a room's history back to its first message, limit at a
// time, through the history command.
func pageBack(t *testing.T, c *chattest.Client, room string, limit int) []protocol.Message {
	t.Helper()
	var all []protocol.Message
	var before int64
	for range 1000 {
		var h protocol.HistoryResult
		c.OK("history", map[string]any{"room": room, "before": before, "limit": limit}, &h)
		if len(h.Messages) == 0 {
			return all
		}
		all = append(h.Messages, all...)
		before = h.Messages[0].Seq
	}
	t.Fatal("history never reached the first message")
	return nil
}

func TestHistoryPagesPastRedisToTheFirstMessage(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		addr, prefix := chattest.RedisAddr(t), chattest.UniquePrefix()
		opts := []func(*config.Config){chattest.WithRedis(addr, prefix), chattest.WithStore(d), fastSender,
			func(c *config.Config) { c.Chat.HistorySize = 50 }}
		a, b := chattest.Start(t, opts...), chattest.Start(t, opts...)
		alice := a.DialName(t, "alice")
		join := alice.Join("archive")
		const total = 1000
		seqs := sendMany(t, alice, "archive", total)
		if seqs[0] != 1 || seqs[total-1] != total {
			t.Fatalf("acknowledged seqs %d..%d, want 1..%d", seqs[0], seqs[total-1], total)
		}
		waitStored(t, openStore(t, d), "archive", join.Epoch, total)

		reader := b.DialName(t, "reader")
		reader.Join("archive")
		got := pageBack(t, reader, "archive", 100)
		if len(got) != total {
			t.Fatalf("paging back read %d messages, want %d", len(got), total)
		}
		for i, m := range got {
			if m.Seq != int64(i+1) || m.Epoch != join.Epoch || m.Text != fmt.Sprintf("m%d", i+1) || m.From != "alice" || m.Room != "archive" {
				t.Fatalf("message %d = %+v, want seq %d, m%d from alice in epoch %s", i, m, i+1, i+1, join.Epoch)
			}
		}

		// The REST API pages the same way.
		var page struct{ Messages []protocol.Message }
		resp, err := http.Get(b.URL + "/api/rooms/archive/messages?before=101&limit=100")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET messages before 101: %d, %v", resp.StatusCode, err)
		}
		if len(page.Messages) != 100 || page.Messages[0].Seq != 1 || page.Messages[99].Seq != 100 {
			t.Fatalf("REST page before 101 = %d messages (%v..), want 1..100", len(page.Messages), page.Messages[:min(1, len(page.Messages))])
		}
	})
}

func TestRoomContinuesFromTheStoreAfterRedisRestartsEmpty(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		redis := chattest.StartRedisServer(t)
		opts := []func(*config.Config){chattest.WithRedis(redis.Addr, "chat"), chattest.WithStore(d), fastSender}
		a, b := chattest.Start(t, opts...), chattest.Start(t, opts...)
		alice, bob := a.DialName(t, "alice"), b.DialName(t, "bob")
		join := alice.Join("lobby")
		bob.Join("lobby")
		sendMany(t, alice, "lobby", 20)
		for range 20 {
			bob.Message("lobby")
		}
		waitStored(t, openStore(t, d), "lobby", join.Epoch, 20)
		bob.WS.Close()

		redis.Restart(t)

		// Sends answer unavailable until the replicas reconnect; the
		// retry with the same key is safe.
		var sent protocol.SendResult
		deadline := time.Now().Add(faultRecover)
		for {
			r := alice.Do("send", map[string]any{"room": "lobby", "text": "after", "key": "after-1"})
			if r.Err == nil {
				r.Decode(t, &sent)
				break
			}
			if r.Err.Code != protocol.CodeUnavailable || time.Now().After(deadline) {
				t.Fatalf("send after the Redis restart: %+v", r.Err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if sent.Seq != 21 {
			t.Fatalf("first send after Redis came back empty has seq %d, want 21 (the store's head is 20)", sent.Seq)
		}

		// bob resumes from where he was, on the other replica: no resync,
		// nothing missed, the same epoch.
		back := b.DialName(t, "bob")
		var res protocol.JoinResult
		back.OK("join", map[string]any{"room": "lobby", "since": map[string]any{"epoch": join.Epoch, "seq": 20}}, &res)
		if !res.Recovered || res.Epoch != join.Epoch || res.Seq != 21 || len(res.History) != 1 || res.History[0].Text != "after" {
			t.Fatalf("resume after the Redis restart = recovered %v, epoch %s seq %d, history %v; want recovered in %s at 21 with the one message",
				res.Recovered, res.Epoch, res.Seq, res.History, join.Epoch)
		}
		// An older position recovers too: the store has what Redis lost.
		late := b.DialName(t, "carol")
		late.OK("join", map[string]any{"room": "lobby", "since": map[string]any{"epoch": join.Epoch, "seq": 5}}, &res)
		if !res.Recovered || len(res.History) != 16 || res.History[0].Seq != 6 || res.History[15].Seq != 21 {
			t.Fatalf("resume from seq 5 = recovered %v with %d messages, want recovered with 6..21", res.Recovered, len(res.History))
		}
		back.Quiet("resync", 300*time.Millisecond)
	})
}

func TestOfflineDirectMessagesArriveOnceOldestFirstAfterWelcome(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		addr, prefix := chattest.RedisAddr(t), chattest.UniquePrefix()
		opts := []func(*config.Config){chattest.WithRedis(addr, prefix), chattest.WithStore(d),
			func(c *config.Config) { c.Chat.ApiKey = "k" }}
		a, b := chattest.Start(t, opts...), chattest.Start(t, opts...)
		alice := a.DialName(t, "alice")
		const count = 30
		for i := range count {
			var res protocol.DirectResult
			alice.OK("direct", map[string]any{"to": "bob", "text": fmt.Sprintf("d%d", i+1)}, &res)
			if !res.Stored || res.To != "bob" || res.TS == 0 {
				t.Fatalf("direct to an offline user = %+v, want stored: true", res)
			}
		}
		// The admin API stores them too.
		req, _ := http.NewRequest(http.MethodPost, a.URL+"/api/users/bob/messages", jsonBody(t, map[string]any{"text": "from admin"}))
		req.Header.Set("X-API-Key", "k")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var posted struct {
			User        string
			Connections int
			Stored      bool
		}
		_ = json.NewDecoder(resp.Body).Decode(&posted)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !posted.Stored || posted.Connections != 0 {
			t.Fatalf("POST /api/users/bob/messages while bob is offline = %d %+v, want 200 stored", resp.StatusCode, posted)
		}

		// bob's next connection, on the other replica, gets them right
		// after its welcome, oldest first, each marked offline; the reply
		// to its first command comes after them all.
		bob := b.DialName(t, "bob")
		marker := bob.Start("rooms", nil)
		var got []string
		for {
			e := bob.Next()
			if e.Type == "reply" && e.Int("id") == int64(marker) {
				break
			}
			if e.Type != "direct" || e.Field("offline") != true || e.Str("to") != "bob" || e.Str("from") == "" {
				t.Fatalf("bob's connection got %s among its offline messages, want direct events with offline: true", e)
			}
			got = append(got, e.Str("text"))
		}
		want := []string{}
		for i := range count {
			want = append(want, fmt.Sprintf("d%d", i+1))
		}
		want = append(want, "from admin")
		if !slices.Equal(got, want) {
			t.Fatalf("bob's offline messages = %v, want %v", got, want)
		}
		// Each once: bob's next connection gets none.
		again := a.DialName(t, "bob")
		again.Quiet("direct", 300*time.Millisecond)

		// Online, a direct is delivered as before, not stored.
		var res protocol.DirectResult
		alice.OK("direct", map[string]any{"to": "bob", "text": "live"}, &res)
		if res.Stored {
			t.Fatalf("direct to an online user = %+v, want delivered (stored false)", res)
		}
		for _, c := range []*chattest.Client{bob, again} {
			if e := c.WaitFor("direct", nil); e.Str("text") != "live" || e.Field("offline") != nil {
				t.Fatalf("live direct = %s", e)
			}
		}
	})
}

func TestRetentionDeletesWhatIsOlderAndKeepsTheSequence(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		const retention = 2 * time.Second
		s := chattest.Start(t, chattest.WithStore(d), fastSender, func(c *config.Config) {
			c.Chat.HistorySize = 5
			c.Store.Retention = retention
		})
		alice := s.DialName(t, "alice")
		join := alice.Join("old")
		sendMany(t, alice, "old", 10)
		st := openStore(t, d)
		waitStored(t, st, "old", join.Epoch, 10)
		// The memory broker keeps seqs 6..10; 1..5 are in the store only,
		// until Retention deletes them.
		var h protocol.HistoryResult
		alice.OK("history", map[string]any{"room": "old", "before": 6}, &h)
		if len(h.Messages) != 5 {
			t.Fatalf("history before 6 = %d messages, want 5 from the store", len(h.Messages))
		}
		deadline := time.Now().Add(retention + storeWait)
		for {
			alice.OK("history", map[string]any{"room": "old", "before": 6}, &h)
			if len(h.Messages) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v after the sends history before 6 still has %d messages (Retention %v)", time.Since(deadline.Add(-retention-storeWait)), len(h.Messages), retention)
			}
			time.Sleep(200 * time.Millisecond)
		}
		head, ok, err := st.Head(context.Background(), "old")
		if err != nil || !ok || head.Epoch != join.Epoch || head.Seq != 10 {
			t.Fatalf("head after retention = %+v %v %v, want (%s, 10): a room keeps its sequence", head, ok, err, join.Epoch)
		}
	})
}

func jsonBody(t *testing.T, v any) *bytes.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

// TestStoreDownKeepsSendsWorkingAndIsFilledWhenBack cuts two replicas off
// their MariaDB (a fault proxy) while they chat: sends are answered from
// Redis as before, and once the store is back the sweepers copy what it
// missed from Redis's history, every seq once. (SQLite is a file on the
// node itself: it has no outage of this kind.)
func TestStoreDownKeepsSendsWorkingAndIsFilledWhenBack(t *testing.T) {
	d := chattest.NewStoreDSN(t, store.DriverMySQL)
	cfg, err := mysql.ParseDSN(d.DSN)
	if err != nil {
		t.Fatal(err)
	}
	proxy := chattest.StartFaultProxy(t, cfg.Addr)
	cfg.Addr = proxy.Addr()
	proxied := chattest.StoreDSN{Driver: d.Driver, DSN: cfg.FormatDSN()}
	addr, prefix := chattest.RedisAddr(t), chattest.UniquePrefix()
	opts := []func(*config.Config){chattest.WithRedis(addr, prefix), chattest.WithStore(proxied), fastSender}
	a, b := chattest.Start(t, opts...), chattest.Start(t, opts...)
	alice, bob := a.DialName(t, "alice"), b.DialName(t, "bob")
	join := alice.Join("outage")
	bob.Join("outage")
	sendMany(t, alice, "outage", 5)
	st := openStore(t, d)
	waitStored(t, st, "outage", join.Epoch, 5)

	proxy.Cut()
	seqs := sendMany(t, alice, "outage", 20)
	if seqs[0] != 6 || seqs[19] != 25 {
		t.Fatalf("sends while the store is down got seqs %d..%d, want 6..25", seqs[0], seqs[19])
	}
	for i := range 25 {
		if m := bob.Message("outage"); m.Seq != int64(i+1) {
			t.Fatalf("bob got seq %d, want %d", m.Seq, i+1)
		}
	}
	var h protocol.HistoryResult
	bob.OK("history", map[string]any{"room": "outage", "limit": 20}, &h)
	if len(h.Messages) != 20 || h.Messages[19].Seq != 25 {
		t.Fatalf("history within Redis's window while the store is down = %d messages", len(h.Messages))
	}
	// What needs the store answers unavailable: a direct to an offline
	// user (it could not be kept).
	alice.Fail("direct", map[string]any{"to": "nobody-here", "text": "hi"}, protocol.CodeUnavailable)

	proxy.Restore()
	waitStoredWithin(t, st, "outage", join.Epoch, 25, 45*time.Second)
}

// waitStoredWithin is waitStored with its own bound: after a store outage
// a room may wait for a failed claim's lease (10s) before it is swept again.
func waitStoredWithin(t *testing.T, st *store.Store, room, epoch string, upTo int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		seqs, err := st.Seqs(context.Background(), room, epoch, 0, upTo)
		if err == nil && len(seqs) == int(upTo) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the store holds %d of seqs 1..%d of %s (err %v)", d, len(seqs), upTo, room, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestOneNodeWithSQLiteContinuesAfterARestart: one node on the memory
// broker and SQLite answers a send once it is stored, so a restart loses
// no acknowledged message, and the room goes on in its epoch.
func TestOneNodeWithSQLiteContinuesAfterARestart(t *testing.T) {
	d := chattest.NewStoreDSN(t, store.DriverSQLite)
	first := chattest.Start(t, chattest.WithStore(d))
	alice := first.DialName(t, "alice")
	join := alice.Join("diary")
	for i := range 3 {
		alice.Say("diary", fmt.Sprintf("entry %d", i+1))
	}
	first.Stop()

	second := chattest.Start(t, chattest.WithStore(d))
	back := second.DialName(t, "alice")
	var res protocol.JoinResult
	back.OK("join", map[string]any{"room": "diary", "since": map[string]any{"epoch": join.Epoch, "seq": 1}}, &res)
	if !res.Recovered || res.Epoch != join.Epoch || res.Seq != 3 || len(res.History) != 2 || res.History[1].Text != "entry 3" {
		t.Fatalf("join after the restart = recovered %v, (%s, %d), %v; want recovered in %s at 3 with entries 2 and 3",
			res.Recovered, res.Epoch, res.Seq, res.History, join.Epoch)
	}
	if seq := back.Say("diary", "entry 4"); seq != 4 {
		t.Fatalf("first send after the restart got seq %d, want 4", seq)
	}
}

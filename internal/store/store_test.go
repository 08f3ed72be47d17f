package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"chat/internal/chattest"
	"chat/internal/protocol"
	"chat/internal/store"
)

const epoch1, epoch2 = "e1e1e1e1e1e1e1e1", "e2e2e2e2e2e2e2e2"

func open(t *testing.T, d chattest.StoreDSN) *store.Store {
	t.Helper()
	s, err := store.Open(d.Driver, d.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if s.Driver() != d.Driver {
		t.Fatalf("Driver() = %q, want %q", s.Driver(), d.Driver)
	}
	return s
}

// msg is the message seq of a room's epoch; its ts is seq.
func msg(room, epoch string, seq int64) protocol.Message {
	return protocol.Message{
		Type: "message", Room: room, Epoch: epoch, Seq: seq,
		ID: fmt.Sprintf("id-%s-%d", epoch[:2], seq), From: "ann", Text: fmt.Sprintf("text %d", seq), TS: seq,
	}
}

func msgs(room, epoch string, from, to int64) []protocol.Message {
	var out []protocol.Message
	for seq := from; seq <= to; seq++ {
		out = append(out, msg(room, epoch, seq))
	}
	return out
}

func direct(to string, n int, ts int64) protocol.Direct {
	return protocol.Direct{Type: "direct", ID: fmt.Sprintf("d-%s-%d", to, n), From: "ann", To: to, Text: fmt.Sprintf("direct %d", n), TS: ts}
}

// taken is d as TakeDirects returns it.
func taken(d ...protocol.Direct) []protocol.Direct {
	out := make([]protocol.Direct, len(d))
	for i, x := range d {
		x.Offline = true
		out[i] = x
	}
	return out
}

func mustAppend(t *testing.T, s *store.Store, m []protocol.Message) {
	t.Helper()
	if err := s.Append(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func mustMessages(t *testing.T, s *store.Store, room, epoch string, after, before int64, limit int) []protocol.Message {
	t.Helper()
	got, err := s.Messages(context.Background(), room, epoch, after, before, limit)
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("Messages returned a nil slice")
	}
	return got
}

func seqsOf(m []protocol.Message) []int64 {
	out := []int64{}
	for _, x := range m {
		out = append(out, x.Seq)
	}
	return out
}

func wantHead(t *testing.T, s *store.Store, room string, want store.Head) {
	t.Helper()
	h, ok, err := s.Head(context.Background(), room)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || h != want {
		t.Fatalf("head of %s = %+v (ok %v), want %+v", room, h, ok, want)
	}
}

func TestAppendReadsBack(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		ctx := context.Background()
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Append(ctx, nil); err != nil {
			t.Fatalf("Append(nil) = %v", err)
		}
		// Two rooms, interleaved and out of order.
		batch := []protocol.Message{msg("b", epoch1, 2), msg("a", epoch1, 3), msg("a", epoch1, 1), msg("b", epoch1, 1), msg("a", epoch1, 2)}
		batch[1].Text = "line one\nline two\t'quoted' \"double\" \\ back"
		mustAppend(t, s, batch)

		got := mustMessages(t, s, "a", epoch1, 0, 0, 100)
		want := []protocol.Message{batch[2], batch[4], batch[1]}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("room a:\n got %+v\nwant %+v", got, want)
		}
		if got := mustMessages(t, s, "b", epoch1, 0, 0, 100); !reflect.DeepEqual(got, []protocol.Message{batch[3], batch[0]}) {
			t.Fatalf("room b: %+v", got)
		}
		wantHead(t, s, "a", store.Head{Epoch: epoch1, Seq: 3})
		wantHead(t, s, "b", store.Head{Epoch: epoch1, Seq: 2})
		if got := mustMessages(t, s, "nowhere", epoch1, 0, 0, 10); len(got) != 0 {
			t.Fatalf("unknown room: %+v", got)
		}
		if got := mustMessages(t, s, "a", epoch2, 0, 0, 10); len(got) != 0 {
			t.Fatalf("other epoch: %+v", got)
		}
	})
}

func TestHeadOfUnknownRoomIsNotOK(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		h, ok, err := s.Head(context.Background(), "never")
		if err != nil || ok || h != (store.Head{}) {
			t.Fatalf("Head = %+v, %v, %v; want zero, false, nil", h, ok, err)
		}
	})
}

func TestRoomNamesCompareByteForByte(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		mustAppend(t, s, []protocol.Message{msg("Room", epoch1, 1), msg("room", epoch1, 1), msg("room", epoch1, 2), msg("rööm", epoch1, 1)})
		wantHead(t, s, "Room", store.Head{Epoch: epoch1, Seq: 1})
		wantHead(t, s, "room", store.Head{Epoch: epoch1, Seq: 2})
		wantHead(t, s, "rööm", store.Head{Epoch: epoch1, Seq: 1})
		if _, ok, _ := s.Head(context.Background(), "ROOM"); ok {
			t.Fatal("ROOM has a head")
		}
		if got := mustMessages(t, s, "Room", epoch1, 0, 0, 10); len(got) != 1 {
			t.Fatalf("Room: %+v", got)
		}
	})
}

func TestAppendSkipsDuplicates(t *testing.T) {
	first := msg("r", epoch1, 2)
	second := first
	second.ID, second.Text = "other-id", "a second copy"
	cases := []struct {
		name    string
		batches [][]protocol.Message
	}{
		{"in one batch", [][]protocol.Message{{msg("r", epoch1, 1), first, second, msg("r", epoch1, 3), first}}},
		{"across batches", [][]protocol.Message{{msg("r", epoch1, 1), first}, {second, msg("r", epoch1, 3)}, {first, second}}},
		{"a whole batch again", [][]protocol.Message{msgs("r", epoch1, 1, 3), msgs("r", epoch1, 1, 3)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
				s := open(t, d)
				for _, b := range c.batches {
					mustAppend(t, s, b)
				}
				got := mustMessages(t, s, "r", epoch1, 0, 0, 100)
				if want := msgs("r", epoch1, 1, 3); !reflect.DeepEqual(got, want) {
					t.Fatalf("stored:\n got %+v\nwant %+v (the first copy, once)", got, want)
				}
				seqs, err := s.Seqs(context.Background(), "r", epoch1, 0, 100)
				if err != nil || !reflect.DeepEqual(seqs, []int64{1, 2, 3}) {
					t.Fatalf("Seqs = %v, %v", seqs, err)
				}
				wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 3})
			})
		})
	}
}

// Two replicas copying the same messages at once (SPEC §14: a crashed
// replica's messages are copied on by the others) store each once.
func TestConcurrentAppendsStoreEachMessageOnce(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		const writers, n = 6, 120
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			batch := append(msgs("x", epoch1, 1, n), msgs("y", epoch1, 1, n)...)
			rand.New(rand.NewPCG(uint64(w), 1)).Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
			wg.Go(func() {
				for chunk := range slices.Chunk(batch, 25) {
					if err := s.Append(context.Background(), chunk); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for _, room := range []string{"x", "y"} {
			if got := mustMessages(t, s, room, epoch1, 0, 0, 1000); !reflect.DeepEqual(got, msgs(room, epoch1, 1, n)) {
				t.Fatalf("room %s: %d messages stored, seqs %v", room, len(got), seqsOf(got))
			}
			wantHead(t, s, room, store.Head{Epoch: epoch1, Seq: n})
		}
	})
}

func TestHeadMovesForwardOnly(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		mustAppend(t, s, msgs("r", epoch1, 1, 5))
		wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 5})
		mustAppend(t, s, []protocol.Message{msg("r", epoch1, 3)}) // stored already
		wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 5})
		mustAppend(t, s, []protocol.Message{msg("r", epoch1, 8)})
		wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 8})
		mustAppend(t, s, []protocol.Message{msg("r", epoch1, 7), msg("r", epoch1, 6)}) // late, but new
		wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 8})
		if got := seqsOf(mustMessages(t, s, "r", epoch1, 0, 0, 100)); !reflect.DeepEqual(got, []int64{1, 2, 3, 4, 5, 6, 7, 8}) {
			t.Fatalf("seqs %v", got)
		}
	})
}

func TestHeadFollowsANewEpoch(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		mustAppend(t, s, msgs("r", epoch1, 1, 5))
		// The room's sequence restarted: the head follows, seq going down.
		mustAppend(t, s, msgs("r", epoch2, 1, 2))
		wantHead(t, s, "r", store.Head{Epoch: epoch2, Seq: 2})
		mustAppend(t, s, []protocol.Message{msg("r", epoch2, 3)})
		wantHead(t, s, "r", store.Head{Epoch: epoch2, Seq: 3})
		// A late copy of an old epoch's stored message does not take it back.
		mustAppend(t, s, []protocol.Message{msg("r", epoch1, 5)})
		wantHead(t, s, "r", store.Head{Epoch: epoch2, Seq: 3})
		// Both epochs' messages stay readable.
		if got := seqsOf(mustMessages(t, s, "r", epoch1, 0, 0, 100)); !reflect.DeepEqual(got, []int64{1, 2, 3, 4, 5}) {
			t.Fatalf("epoch1 seqs %v", got)
		}
		if got := seqsOf(mustMessages(t, s, "r", epoch2, 0, 0, 100)); !reflect.DeepEqual(got, []int64{1, 2, 3}) {
			t.Fatalf("epoch2 seqs %v", got)
		}
	})
}

func TestHeadFollowsANewEpochWithinOneBatch(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		mustAppend(t, s, msgs("r", epoch1, 1, 5))
		mustAppend(t, s, []protocol.Message{msg("r", epoch1, 6), msg("r", epoch2, 2), msg("q", epoch1, 9), msg("r", epoch2, 1)})
		wantHead(t, s, "r", store.Head{Epoch: epoch2, Seq: 2})
		wantHead(t, s, "q", store.Head{Epoch: epoch1, Seq: 9})
	})
}

func TestMessagesBoundsAndLimit(t *testing.T) {
	cases := []struct {
		after, before int64
		limit         int
		want          []int64
	}{
		{0, 0, 5, []int64{16, 17, 18, 19, 20}},
		{0, 0, 100, nil}, // nil: all 20
		{0, 10, 3, []int64{7, 8, 9}},
		{5, 0, 3, []int64{18, 19, 20}},
		{5, 10, 100, []int64{6, 7, 8, 9}},
		{0, 2, 10, []int64{1}},
		{0, 1, 10, []int64{}},
		{10, 11, 10, []int64{}},
		{20, 0, 10, []int64{}},
		{19, 0, 10, []int64{20}},
	}
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		mustAppend(t, s, msgs("r", epoch1, 1, 20))
		for _, c := range cases {
			want := c.want
			if want == nil {
				want = seqsOf(msgs("r", epoch1, 1, 20))
			}
			if got := seqsOf(mustMessages(t, s, "r", epoch1, c.after, c.before, c.limit)); !reflect.DeepEqual(got, want) {
				t.Errorf("Messages(after %d, before %d, limit %d) = %v, want %v", c.after, c.before, c.limit, got, want)
			}
		}
		if _, err := s.Messages(context.Background(), "r", epoch1, 0, 0, 0); err == nil {
			t.Error("Messages with limit 0: no error")
		}
	})
}

func TestMessagesPageBackToTheFirst(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		const n, page = 1000, 100
		for chunk := range slices.Chunk(msgs("r", epoch1, 1, n), 250) {
			mustAppend(t, s, chunk)
		}
		var before int64 // 0: from the newest
		pages := 0
		for {
			got := mustMessages(t, s, "r", epoch1, 0, before, page)
			if len(got) == 0 {
				break
			}
			pages++
			top := int64(n - (pages-1)*page)
			if want := msgs("r", epoch1, top-page+1, top); !reflect.DeepEqual(got, want) {
				t.Fatalf("page %d (before %d): seqs %v", pages, before, seqsOf(got))
			}
			before = got[0].Seq
		}
		if pages != n/page || before != 1 {
			t.Fatalf("%d pages reaching seq %d, want %d reaching 1", pages, before, n/page)
		}
	})
}

func TestSeqs(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		var stored []protocol.Message
		for _, m := range msgs("r", epoch1, 1, 10) {
			if m.Seq != 4 && m.Seq != 7 {
				stored = append(stored, m)
			}
		}
		mustAppend(t, s, append(stored, msg("r", epoch2, 5), msg("other", epoch1, 5)))
		cases := []struct {
			epoch       string
			after, upTo int64
			want        []int64
		}{
			{epoch1, 0, 10, []int64{1, 2, 3, 5, 6, 8, 9, 10}},
			{epoch1, 3, 8, []int64{5, 6, 8}},
			{epoch1, 0, 1, []int64{1}},
			{epoch1, 10, 20, []int64{}},
			{epoch1, 5, 5, []int64{}},
			{epoch2, 0, 100, []int64{5}},
			{"none", 0, 100, []int64{}},
		}
		for _, c := range cases {
			got, err := s.Seqs(context.Background(), "r", c.epoch, c.after, c.upTo)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !reflect.DeepEqual(got, c.want) {
				t.Errorf("Seqs(%s, %d, %d) = %#v, want %v", c.epoch, c.after, c.upTo, got, c.want)
			}
		}
	})
}

func TestDeleteBeforeDeletesOldRowsInBatchesAndKeepsHeads(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		ctx := context.Background()
		mustAppend(t, s, msgs("r", epoch1, 1, 10)) // ts 1..10
		mustAppend(t, s, msgs("old", epoch1, 1, 2))
		for i, ts := range []int64{1, 2, 7, 3, 4} {
			if err := s.SaveDirect(ctx, direct("bob", i, ts)); err != nil {
				t.Fatal(err)
			}
		}
		// Before ts 6: 7 messages (5 of r, 2 of old) and 4 directs.
		var counts []int64
		for {
			n, err := s.DeleteBefore(ctx, 6, 3)
			if err != nil {
				t.Fatal(err)
			}
			counts = append(counts, n)
			if n == 0 {
				break
			}
		}
		if want := []int64{6, 4, 1, 0}; !reflect.DeepEqual(counts, want) {
			t.Fatalf("deleted per call %v, want %v", counts, want)
		}
		if got := seqsOf(mustMessages(t, s, "r", epoch1, 0, 0, 100)); !reflect.DeepEqual(got, []int64{6, 7, 8, 9, 10}) {
			t.Fatalf("left of r: %v", got)
		}
		if got := mustMessages(t, s, "old", epoch1, 0, 0, 100); len(got) != 0 {
			t.Fatalf("left of old: %v", got)
		}
		wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 10})
		wantHead(t, s, "old", store.Head{Epoch: epoch1, Seq: 2})
		got, err := s.TakeDirects(ctx, "bob", 10)
		if err != nil {
			t.Fatal(err)
		}
		if want := taken(direct("bob", 2, 7)); !reflect.DeepEqual(got, want) {
			t.Fatalf("directs left %+v, want %+v", got, want)
		}
		// An expired room continues its sequence.
		mustAppend(t, s, []protocol.Message{msg("old", epoch1, 3)})
		wantHead(t, s, "old", store.Head{Epoch: epoch1, Seq: 3})
		if _, err := s.DeleteBefore(ctx, 6, 0); err == nil {
			t.Error("DeleteBefore with limit 0: no error")
		}
	})
}

func TestDirectsAreTakenOldestFirstAndOnce(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		ctx := context.Background()
		var bob []protocol.Direct
		for i := range 5 {
			d := direct("bob", i, int64(100-i)) // ts going down: order is insertion's
			bob = append(bob, d)
			if err := s.SaveDirect(ctx, d); err != nil {
				t.Fatal(err)
			}
			if err := s.SaveDirect(ctx, direct("carol", i, 1)); err != nil {
				t.Fatal(err)
			}
		}
		take := func(user string, limit int) []protocol.Direct {
			t.Helper()
			got, err := s.TakeDirects(ctx, user, limit)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("TakeDirects returned a nil slice")
			}
			return got
		}
		if got, want := take("bob", 3), taken(bob[:3]...); !reflect.DeepEqual(got, want) {
			t.Fatalf("first take:\n got %+v\nwant %+v", got, want)
		}
		if got, want := take("bob", 10), taken(bob[3:]...); !reflect.DeepEqual(got, want) {
			t.Fatalf("second take:\n got %+v\nwant %+v", got, want)
		}
		if got := take("bob", 10); len(got) != 0 {
			t.Fatalf("third take: %+v", got)
		}
		if got := take("Bob", 10); len(got) != 0 {
			t.Fatalf("Bob took bob's: %+v", got)
		}
		if got := take("carol", 10); len(got) != 5 {
			t.Fatalf("carol has %d, want 5", len(got))
		}
		if _, err := s.TakeDirects(ctx, "bob", 0); err == nil {
			t.Error("TakeDirects with limit 0: no error")
		}
	})
}

// Two replicas (or connections) taking one user's directs at once: each
// message is delivered once, and each taker's share comes oldest first.
func TestConcurrentTakersGetEachDirectOnce(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		ctx := context.Background()
		const n, takers = 200, 8
		for i := range n {
			if err := s.SaveDirect(ctx, direct("dave", i, int64(i))); err != nil {
				t.Fatal(err)
			}
		}
		start := make(chan struct{})
		shares := make([][]protocol.Direct, takers)
		errs := make([]error, takers)
		var wg sync.WaitGroup
		for w := range takers {
			wg.Go(func() {
				<-start
				for {
					got, err := s.TakeDirects(ctx, "dave", 7)
					if err != nil {
						errs[w] = err
						return
					}
					if len(got) == 0 {
						return
					}
					shares[w] = append(shares[w], got...)
				}
			})
		}
		close(start)
		wg.Wait()
		seen := map[string]int{}
		for w := range takers {
			if errs[w] != nil {
				t.Fatalf("taker %d: %v", w, errs[w])
			}
			if !slices.IsSortedFunc(shares[w], func(a, b protocol.Direct) int { return int(a.TS - b.TS) }) {
				t.Errorf("taker %d got its share out of order", w)
			}
			for _, d := range shares[w] {
				seen[d.ID]++
			}
		}
		for i := range n {
			if id := direct("dave", i, 0).ID; seen[id] != 1 {
				t.Errorf("%s taken %d times", id, seen[id])
			}
		}
		if len(seen) != n {
			t.Errorf("%d distinct messages taken, want %d", len(seen), n)
		}
	})
}

func TestUnicodeRoundTrips(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s := open(t, d)
		ctx := context.Background()
		room := strings.Repeat("😀", 32) + strings.Repeat("房", 32) // 64 characters, 4- and 3-byte
		m := msg(room, epoch1, 1)
		m.From = "Zoë 🦊"
		m.Text = strings.Repeat("👍🏽", 1000) // 2000 code points, 8,000 bytes
		m2 := msg(room, epoch1, 2)
		m2.Text = "héllo 世界 𝄞 \u0000 nul and\r\nCRLF"
		mustAppend(t, s, []protocol.Message{m, m2})
		if got := mustMessages(t, s, room, epoch1, 0, 0, 10); !reflect.DeepEqual(got, []protocol.Message{m, m2}) {
			t.Fatalf("read back differs:\n got %+v\nwant %+v", got, []protocol.Message{m, m2})
		}
		wantHead(t, s, room, store.Head{Epoch: epoch1, Seq: 2})

		dm := protocol.Direct{Type: "direct", ID: "d1", From: "Zoë 🦊", To: "Ōsaka 🐙", Text: strings.Repeat("🐙", 2000), TS: 5}
		if err := s.SaveDirect(ctx, dm); err != nil {
			t.Fatal(err)
		}
		got, err := s.TakeDirects(ctx, dm.To, 10)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, taken(dm)) {
			t.Fatalf("direct read back differs: %+v", got)
		}
	})
}

// MySQL in a lax sql_mode would cut a too-long value short and store it;
// the store asks for strict mode.
func TestTooLongValueIsAnErrorOnMySQL(t *testing.T) {
	s := chattest.OpenStore(t, store.DriverMySQL)
	err := s.Append(context.Background(), []protocol.Message{msg("r", epoch1, 1), msg(strings.Repeat("x", 65), epoch1, 1)})
	if err == nil {
		t.Fatal("a 65-character room name was stored")
	}
	if !strings.Contains(err.Error(), "append 2 messages") {
		t.Errorf("error without context: %v", err)
	}
	if _, ok, _ := s.Head(context.Background(), "r"); ok {
		t.Error("a failed Append stored part of its batch")
	}
}

func TestOpenTwiceKeepsTheData(t *testing.T) {
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		s, err := store.Open(d.Driver, d.DSN)
		if err != nil {
			t.Fatal(err)
		}
		mustAppend(t, s, msgs("r", epoch1, 1, 3))
		if err := s.SaveDirect(context.Background(), direct("bob", 1, 1)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, d)
		wantHead(t, s, "r", store.Head{Epoch: epoch1, Seq: 3})
		if got := seqsOf(mustMessages(t, s, "r", epoch1, 0, 0, 10)); !reflect.DeepEqual(got, []int64{1, 2, 3}) {
			t.Fatalf("seqs %v", got)
		}
		got, err := s.TakeDirects(context.Background(), "bob", 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("TakeDirects = %+v, %v", got, err)
		}
	})
}

func TestOpenRejectsBadArguments(t *testing.T) {
	cases := []struct{ driver, dsn string }{
		{"postgres", "x"},
		{"", "chat.db"},
		{store.DriverSQLite, ""},
		{store.DriverMySQL, "root@tcp(127.0.0.1:3306)/"}, // no database
		{store.DriverMySQL, "not a dsn"},
	}
	for _, c := range cases {
		if s, err := store.Open(c.driver, c.dsn); err == nil {
			s.Close()
			t.Errorf("Open(%q, %q): no error", c.driver, c.dsn)
		}
	}
}

func TestSQLiteFileIsInWALMode(t *testing.T) {
	d := chattest.NewStoreDSN(t, store.DriverSQLite)
	s := open(t, d)
	mustAppend(t, s, msgs("r", epoch1, 1, 1))
	if _, err := os.Stat(d.DSN + "-wal"); err != nil {
		t.Errorf("no write-ahead log beside the database: %v", err)
	}
	db, err := sql.Open("sqlite", d.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Fatalf("journal_mode %q, want wal", mode)
	}
}

// BenchmarkAppend stores batches of 100 messages of 10 rooms, as the
// archive writes them.
func BenchmarkAppend(b *testing.B) {
	for _, driver := range chattest.StoreDrivers() {
		b.Run(driver, func(b *testing.B) {
			d := chattest.NewStoreDSN(b, driver)
			s, err := store.Open(d.Driver, d.DSN)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			text := strings.Repeat("x", 100)
			var seq int64
			batch := make([]protocol.Message, 100)
			b.ReportAllocs()
			for b.Loop() {
				for i := range batch {
					if i%10 == 0 {
						seq++
					}
					batch[i] = protocol.Message{Type: "message", Room: fmt.Sprintf("room-%d", i%10), Epoch: epoch1, Seq: seq, ID: "id", From: "ann", Text: text, TS: seq}
				}
				if err := s.Append(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

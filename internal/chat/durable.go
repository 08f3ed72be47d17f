package chat

import (
	"context"
	"fmt"
	"runtime/pprof"
	"sync"
	"time"

	"chat/internal/broker"
	"chat/internal/protocol"
	"chat/internal/store"

	"github.com/zeromicro/go-zero/core/logx"
)

// StoreOptions say how a node uses its durable store (SPEC §14).
type StoreOptions struct {
	// Retention deletes room messages and offline direct messages older
	// than it; 0 keeps them forever.
	Retention time.Duration
	// SyncSends answers a send only once its message is in the store: for
	// a backbone whose history dies with the process (the memory broker),
	// where nothing could copy the message on after a crash.
	SyncSends bool
}

// WithStore gives the node a durable store, which the node closes at
// shutdown.
func WithStore(st *store.Store, opts StoreOptions) Option {
	return func(n *Node) { n.archive = newArchive(n, st, opts) }
}

// Option configures a node.
type Option func(*Node)

// How the archive carries messages into the store. Every published message
// reaches the store once per (room, epoch, seq), whichever of two paths gets
// there first, and a repeated write is skipped by the table's unique key:
//
//   - the publishing node's writer appends what it published, in batches,
//     milliseconds later (a send is answered before that, except with
//     SyncSends);
//   - the broker marks every published room unstored, due storeDelay later,
//     and every node's sweeper claims due rooms, checks which seqs since the
//     room's stored mark the store lacks, copies those from the broker's
//     history and marks the room stored. So a node killed between the publish
//     and its write, or a write that failed (store down), loses nothing that
//     history still holds when the sweeper gets there; what it no longer
//     holds is a gap, counted in chat_store_gap_messages_total and logged.
const (
	storeDelay    = 2 * time.Second  // a publish's room is due for the sweepers after it
	sweepInterval = time.Second      // how often a node's sweeper claims due rooms
	claimLease    = 10 * time.Second // a claimed room is handed out again after it (its sweeper died)
	claimBatch    = 100              // rooms per claim
	writeBatch    = 256              // messages per store transaction
	writeQueue    = 8192             // messages waiting for the writer; beyond, the sweepers store them
	storeTimeout  = 5 * time.Second  // bounds every store call
	// retentionInterval is how often a node deletes what Retention expired.
	retentionInterval = time.Minute
	retentionBatch    = 10000 // rows per delete statement
	// offlineBatch and offlineMax bound the offline direct messages a new
	// connection takes: the rest wait for the next connection.
	offlineBatch = 100
	offlineMax   = 1000
)

// archive is a node's side of the store: its writer, sweeper and retention.
type archive struct {
	node  *Node
	store *store.Store
	opts  StoreOptions

	queue chan archived
	stop  chan struct{}
	wg    sync.WaitGroup
}

// archived is a message for the writer; done (SyncSends) hears the outcome.
// A message without a room is a barrier: done hears when everything queued
// before it was written.
type archived struct {
	msg  protocol.Message
	done chan error
}

func newArchive(n *Node, st *store.Store, opts StoreOptions) *archive {
	return &archive{node: n, store: st, opts: opts, queue: make(chan archived, writeQueue), stop: make(chan struct{})}
}

// start runs the writer, the sweeper and the retention loop.
func (a *archive) start() {
	a.wg.Add(3)
	go a.writeLoop()
	go a.sweepLoop()
	go a.retentionLoop()
}

// close writes what is queued and stops.
func (a *archive) close() {
	close(a.stop)
	a.wg.Wait()
	if err := a.store.Close(); err != nil {
		logx.Errorf("close store: %v", err)
	}
}

// add hands a published message to the writer. With SyncSends it waits for
// the write and reports its failure; else a full queue drops the message,
// which the sweepers store from history StoreDelay later.
func (a *archive) add(ctx context.Context, msg protocol.Message) error {
	if !a.opts.SyncSends {
		select {
		case a.queue <- archived{msg: msg}:
		default:
			metrics.storeDeferred.Inc()
		}
		return nil
	}
	done := make(chan error, 1)
	select {
	case a.queue <- archived{msg: msg, done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush waits until what was queued before it is written.
func (a *archive) flush(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case a.queue <- archived{done: done}:
	case <-ctx.Done():
		return ctx.Err()
	case <-a.stop:
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// head is where a room without a sequence in the broker continues
// (broker.Options.Heads): the store's head, once this node's writes of the
// room have landed (so that its last published seqs are not handed out
// again).
func (a *archive) head(ctx context.Context, room string) (broker.Head, error) {
	if err := a.flush(ctx); err != nil {
		return broker.Head{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	h, _, err := a.store.Head(ctx, room)
	if err != nil {
		metrics.storeErrors.Inc()
		return broker.Head{}, err
	}
	return broker.Head{Epoch: h.Epoch, Seq: h.Seq}, nil
}

func (a *archive) writeLoop() {
	defer a.wg.Done()
	pprof.SetGoroutineLabels(labelsStore)
	batch := make([]archived, 0, writeBatch)
	for {
		batch = batch[:0]
		select {
		case item := <-a.queue:
			batch = append(batch, item)
		case <-a.stop:
			a.drainQueue(batch)
			return
		}
	more:
		for len(batch) < writeBatch {
			select {
			case item := <-a.queue:
				batch = append(batch, item)
			default:
				break more
			}
		}
		a.write(batch)
	}
}

// drainQueue writes what is still queued at shutdown.
func (a *archive) drainQueue(batch []archived) {
	for {
		select {
		case item := <-a.queue:
			batch = append(batch, item)
			if len(batch) < writeBatch {
				continue
			}
		default:
		}
		if len(batch) == 0 {
			return
		}
		a.write(batch)
		batch = batch[:0]
	}
}

// write appends a batch in one transaction and tells the waiters. A failed
// batch is left to the sweepers (its rooms stay unstored in the broker).
func (a *archive) write(batch []archived) {
	msgs := make([]protocol.Message, 0, len(batch))
	for _, item := range batch {
		if item.msg.Room != "" {
			msgs = append(msgs, item.msg)
		}
	}
	var err error
	if len(msgs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		start := time.Now()
		err = a.store.Append(ctx, msgs)
		cancel()
		metrics.storeWriteSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			metrics.storeErrors.Inc()
			logx.Errorf("store: write %d messages: %v (the sweepers retry from history)", len(msgs), err)
			err = protocol.Errorf(protocol.CodeUnavailable, "the message store is unavailable; retrying with the same key is safe")
		}
	}
	for _, item := range batch {
		if item.done != nil {
			item.done <- err
		}
	}
}

func (a *archive) sweepLoop() {
	defer a.wg.Done()
	pprof.SetGoroutineLabels(labelsStore)
	ticker := time.NewTicker(sweepInterval)
	defer ticker.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-ticker.C:
			a.sweep()
		}
	}
}

// sweep claims the rooms due and makes sure each is stored up to its head.
func (a *archive) sweep() {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	rooms, err := a.node.broker.ClaimUnstored(ctx, claimLease, claimBatch)
	cancel()
	if err != nil {
		_ = brokerError("claim unstored rooms", err)
		return
	}
	for _, u := range rooms {
		if err := a.copyOn(u); err != nil {
			// The claim expires after claimLease and the room is swept again.
			metrics.storeErrors.Inc()
			logx.Errorf("store: sweep %s: %v", u.Room, err)
			continue
		}
	}
}

// copyOn stores what the store lacks of u's messages in (Stored, Seq] from
// the broker's history, counts what history no longer holds as a gap, and
// marks the room stored.
func (a *archive) copyOn(u broker.Unstored) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if u.Epoch != "" && u.Seq > u.Stored {
		have, err := a.store.Seqs(ctx, u.Room, u.Epoch, u.Stored, u.Seq)
		if err != nil {
			return err
		}
		if missing := missingSeqs(u.Stored, u.Seq, have); len(missing) > 0 {
			if err := a.copyMissing(ctx, u, missing); err != nil {
				return err
			}
		}
	}
	if err := a.node.broker.MarkStored(ctx, u); err != nil {
		return fmt.Errorf("mark stored: %w", err)
	}
	return nil
}

// copyMissing copies the missing seqs (ascending) of u from history.
func (a *archive) copyMissing(ctx context.Context, u broker.Unstored, missing []int64) error {
	h, err := a.node.broker.History(ctx, u.Room, broker.HistoryQuery{After: missing[0] - 1})
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	want := make(map[int64]bool, len(missing))
	for _, seq := range missing {
		want[seq] = true
	}
	var found []protocol.Message
	if h.Epoch == u.Epoch {
		for _, m := range h.Messages {
			if want[m.Seq] {
				found = append(found, m)
			}
		}
	}
	if len(found) > 0 {
		if err := a.store.Append(ctx, found); err != nil {
			return fmt.Errorf("copy %d messages: %w", len(found), err)
		}
		metrics.storeCopied.Add(float64(len(found)))
	}
	if lost := len(missing) - len(found); lost > 0 {
		metrics.storeGap.Add(float64(lost))
		logx.Errorf("store: %d messages of %s (epoch %s, seqs %d..%d) were no longer in history when the store could take them: a gap in the store",
			lost, u.Room, u.Epoch, missing[0], missing[len(missing)-1])
	}
	return nil
}

// missingSeqs lists the seqs in (after, upTo] not in have (ascending).
func missingSeqs(after, upTo int64, have []int64) []int64 {
	var missing []int64
	i := 0
	for seq := after + 1; seq <= upTo; seq++ {
		for i < len(have) && have[i] < seq {
			i++
		}
		if i < len(have) && have[i] == seq {
			continue
		}
		missing = append(missing, seq)
	}
	return missing
}

func (a *archive) retentionLoop() {
	defer a.wg.Done()
	if a.opts.Retention <= 0 {
		return
	}
	pprof.SetGoroutineLabels(labelsStore)
	ticker := time.NewTicker(min(retentionInterval, a.opts.Retention))
	defer ticker.Stop()
	for {
		a.expire()
		select {
		case <-a.stop:
			return
		case <-ticker.C:
		}
	}
}

// expire deletes what Retention expired, a batch at a time.
func (a *archive) expire() {
	before := time.Now().Add(-a.opts.Retention).UnixMilli()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		n, err := a.store.DeleteBefore(ctx, before, retentionBatch)
		cancel()
		if err != nil {
			metrics.storeErrors.Inc()
			logx.Errorf("store: retention: %v", err)
			return
		}
		if n < retentionBatch {
			return
		}
		select {
		case <-a.stop:
			return
		default:
		}
	}
}

// older reads the store's messages of h's room before what h holds, so that
// h holds the newest want messages after the seq after and before the seq
// before (0: no bound), as far as the store has them: h is the broker's
// window, and the store reaches past it.
func (a *archive) older(ctx context.Context, room string, h *broker.History, after, before int64, want int) error {
	upper := h.Seq + 1
	if before > 0 && before < upper {
		upper = before
	}
	if len(h.Messages) > 0 {
		upper = h.Messages[0].Seq
	}
	if len(h.Messages) >= want || upper <= after+1 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	msgs, err := a.store.Messages(ctx, room, h.Epoch, after, upper, want-len(h.Messages))
	if err != nil {
		metrics.storeErrors.Inc()
		return fmt.Errorf("stored history of %s: %w", room, err)
	}
	h.Messages = append(msgs, h.Messages...)
	return nil
}

// saveDirect keeps a direct message for its offline recipient.
func (a *archive) saveDirect(ctx context.Context, d protocol.Direct) error {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := a.store.SaveDirect(ctx, d); err != nil {
		metrics.storeErrors.Inc()
		logx.Errorf("store: save direct to %s: %v", d.To, err)
		return protocol.Errorf(protocol.CodeUnavailable, "the message store is unavailable")
	}
	return nil
}

// takeDirects takes the user's offline direct messages, oldest first: at
// most offlineMax, and no more than fill half of queueBytes (a
// connection's queue); the rest wait for the next connection.
func (a *archive) takeDirects(ctx context.Context, user string, queueBytes int) []protocol.Direct {
	var out []protocol.Direct
	size := 0
	for len(out) < offlineMax {
		ctx, cancel := context.WithTimeout(ctx, storeTimeout)
		ds, err := a.store.TakeDirects(ctx, user, min(offlineBatch, offlineMax-len(out)))
		cancel()
		if err != nil {
			metrics.storeErrors.Inc()
			logx.Errorf("store: offline direct messages of %s: %v", user, err)
			break
		}
		out = append(out, ds...)
		for _, d := range ds {
			size += len(d.Text) + len(d.From) + len(d.ID) + 100
		}
		if len(ds) < offlineBatch || size >= queueBytes/2 {
			break
		}
	}
	return out
}

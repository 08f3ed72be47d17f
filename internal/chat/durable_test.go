package chat

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/memory"
	"chat/internal/protocol"
	"chat/internal/store"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestSweeperCopiesWhatHistoryHoldsAndCountsTheRestAsAGap: messages that
// no writer stored (their node died, or the store was down) are copied by
// a sweep from the broker's history; those history no longer holds are
// counted in chat_store_gap_messages_total, and the room is marked stored
// so that the gap is reported once.
func TestSweeperCopiesWhatHistoryHoldsAndCountsTheRestAsAGap(t *testing.T) {
	st, err := store.Open(store.DriverSQLite, filepath.Join(t.TempDir(), "chat.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a := &archive{store: st}
	b := memory.NewBackend(broker.Options{HistorySize: 5, Heads: func(context.Context, string) (broker.Head, error) { return broker.Head{}, nil }}).Node(func(broker.Delivery) {})
	a.node = &Node{broker: b}
	ctx := context.Background()
	var epoch string
	for i := range 12 {
		m, err := b.Publish(ctx, broker.Publication{Room: "r", From: "alice", Text: fmt.Sprint(i + 1), ID: fmt.Sprint(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		epoch = m.Epoch
		if i < 2 {
			if err := st.Append(ctx, []protocol.Message{m}); err != nil { // the writer stored 1 and 2
				t.Fatal(err)
			}
		}
	}
	gap, copied := counterValue(t, metrics.storeGap), counterValue(t, metrics.storeCopied)
	a.sweep()
	seqs, err := st.Seqs(ctx, "r", epoch, 0, 12)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqs) != "[1 2 8 9 10 11 12]" {
		t.Fatalf("stored seqs after the sweep = %v, want 1 2 and 8..12 (history holds the last 5)", seqs)
	}
	if d := counterValue(t, metrics.storeGap) - gap; d != 5 {
		t.Fatalf("gap counted %v, want 5 (seqs 3..7)", d)
	}
	if d := counterValue(t, metrics.storeCopied) - copied; d != 5 {
		t.Fatalf("copied counted %v, want 5", d)
	}
	if left, err := b.ClaimUnstored(ctx, time.Minute, 10); err != nil || len(left) != 0 {
		t.Fatalf("claim after the sweep = %v %v, want none: the room is marked stored", left, err)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/store"

	"github.com/go-sql-driver/mysql"
	"github.com/gorilla/websocket"
)

// TestKilledReplicaLosesNoAcknowledgedMessage kills a replica (SIGKILL)
// while a client sends through it, and checks that every seq it
// acknowledged reaches the store (SPEC §14) through the surviving replica's
// sweeper: the killed replica's own writes are in flight or never happen.
//
// On SQLite both replicas share the file, and the kill lands wherever it
// lands. On MariaDB the killed replica reaches the database through a
// fault proxy that is cut before the sends, so that none of its writes
// land: every acknowledged message must come from Redis's history.
func TestKilledReplicaLosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	chattest.EachStore(t, func(t *testing.T, d chattest.StoreDSN) {
		addr, prefix := chattest.RedisAddr(t), chattest.UniquePrefix()
		doomedStore := d
		var proxy *chattest.FaultProxy
		if d.Driver == store.DriverMySQL {
			cfg, err := mysql.ParseDSN(d.DSN)
			if err != nil {
				t.Fatal(err)
			}
			proxy = chattest.StartFaultProxy(t, cfg.Addr)
			cfg.Addr = proxy.Addr()
			doomedStore.DSN = cfg.FormatDSN()
		}
		// The survivor opens the store first: it creates the tables.
		survivor := chattest.Start(t, chattest.WithRedis(addr, prefix), chattest.WithStore(d))
		// A member on the survivor starts the room's sequence (from the
		// store, which the doomed replica will not reach on MariaDB).
		bob := survivor.DialName(t, "bob")
		bob.Join("ledger")

		dir := t.TempDir()
		port := chattest.FreePort(t)
		cfgPath := filepath.Join(dir, "chat.yaml")
		yaml := fmt.Sprintf("Name: chat\nHost: 127.0.0.1\nPort: %d\nCpuThreshold: 0\nLog:\n  Level: severe\n"+
			"Chat:\n  RateLimit: 100000\n  RateBurst: 100000\nRedis:\n  Addr: %s\n  Prefix: %s\n"+
			"Store:\n  Driver: %s\n  DSN: '%s'\n", port, addr, prefix, doomedStore.Driver, doomedStore.DSN)
		if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(buildBinary(t), "-f", cfgPath)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		waitStatus(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", port), http.StatusOK)
		if proxy != nil {
			proxy.Cut()
		}

		ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/ws?name=alice", port), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		var welcome, joined struct {
			Type   string
			Result struct{ Epoch string }
		}
		if err := ws.ReadJSON(&welcome); err != nil || welcome.Type != "welcome" {
			t.Fatalf("welcome: %+v %v", welcome, err)
		}
		if err := ws.WriteJSON(map[string]any{"type": "join", "room": "ledger", "id": 0}); err != nil {
			t.Fatal(err)
		}
		if err := ws.ReadJSON(&joined); err != nil || joined.Result.Epoch == "" {
			t.Fatalf("join: %+v %v", joined, err)
		}

		// A writer keeps sends in flight; the reader records every
		// acknowledged seq; the replica dies after the first 150. (On
		// MariaDB none of them is written by the replica: the sweepers
		// copy what Redis's history holds, Chat.HistorySize = 200 of the
		// room's latest; more unwritten messages than that would be a gap
		// in the store, reported, not hidden.)
		const window, killAfter = 20, 150
		acked := make(chan int64, 100000)
		credit := make(chan struct{}, window)
		for range window {
			credit <- struct{}{}
		}
		readerDone := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 1; ; i++ {
				select {
				case <-credit:
				case <-readerDone:
					return
				}
				if ws.WriteJSON(map[string]any{"type": "send", "room": "ledger", "text": fmt.Sprintf("m%d", i), "id": i}) != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			defer close(readerDone)
			defer close(acked)
			for {
				// A frame may carry several events, one per line.
				_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, frame, err := ws.ReadMessage()
				if err != nil {
					return
				}
				for line := range bytes.SplitSeq(frame, []byte{'\n'}) {
					var r struct {
						Type   string
						Result struct{ Seq int64 }
						Error  *struct{ Code, Message string }
					}
					if json.Unmarshal(line, &r) != nil || r.Type != "reply" {
						continue
					}
					if r.Error != nil {
						t.Errorf("send answered %+v", *r.Error)
						return
					}
					acked <- r.Result.Seq
					credit <- struct{}{}
				}
			}
		}()
		var seqs []int64
		for seq := range acked {
			seqs = append(seqs, seq)
			if len(seqs) == killAfter {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
			}
		}
		ws.Close()
		wg.Wait()
		if len(seqs) < killAfter {
			t.Fatalf("only %d sends were acknowledged before the connection ended", len(seqs))
		}

		// Every acknowledged seq reaches the store: StoreDelay, then a
		// sweep, or a claim the dead replica held expires first.
		st, err := store.Open(d.Driver, d.DSN)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		slices.Sort(seqs)
		deadline := time.Now().Add(40 * time.Second)
		for {
			have, err := st.Seqs(context.Background(), "ledger", joined.Result.Epoch, 0, seqs[len(seqs)-1])
			missing := 0
			for _, seq := range seqs {
				if _, found := slices.BinarySearch(have, seq); !found {
					missing++
				}
			}
			if err == nil && missing == 0 {
				t.Logf("%d acknowledged seqs (up to %d) all in the %s store %v after the kill", len(seqs), seqs[len(seqs)-1], d.Driver, time.Since(deadline.Add(-40*time.Second)))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("40s after the kill %d of %d acknowledged seqs are not in the store (err %v)", missing, len(seqs), err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// And the room goes on from the survivor with the next seq.
		var next struct{ Seq int64 }
		bob.OK("send", map[string]any{"room": "ledger", "text": "after"}, &next)
		if next.Seq <= seqs[len(seqs)-1] {
			t.Fatalf("send after the kill got seq %d, want more than %d", next.Seq, seqs[len(seqs)-1])
		}
	})
}

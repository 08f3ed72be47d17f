package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
)

// cluster starts n replicas sharing one Redis.
func cluster(t *testing.T, n int, opts ...func(*config.Config)) []*chattest.Server {
	t.Helper()
	addr, prefix := chattest.RedisAddr(t), chattest.UniquePrefix()
	var nodes []*chattest.Server
	for i := 0; i < n; i++ {
		nodes = append(nodes, chattest.Start(t, append([]func(*config.Config){fast, chattest.WithRedis(addr, prefix)}, opts...)...))
	}
	return nodes
}

func TestReplicasShareOneRoomInOrder(t *testing.T) {
	nodes := cluster(t, 3)
	var readers, senders []*chattest.Client
	for i, s := range nodes {
		r := s.DialName(t, fmt.Sprint("reader", i))
		r.Join("global")
		readers = append(readers, r)
		w := s.DialName(t, fmt.Sprint("writer", i))
		w.Join("global")
		senders = append(senders, w)
	}
	const each = 40
	var wg sync.WaitGroup
	for _, w := range senders {
		wg.Add(1)
		go func(w *chattest.Client) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				w.Send(map[string]any{"type": "send", "room": "global", "text": "x"})
			}
		}(w)
	}
	wg.Wait()
	for i, r := range readers {
		for want := int64(1); want <= int64(each*len(senders)); want++ {
			if m := r.Message("global"); m.Seq != want {
				t.Fatalf("reader %d got seq %d, want %d", i, m.Seq, want)
			}
		}
	}
	var members struct{ Members []struct{ User string } }
	readers[0].OK("members", map[string]any{"room": "global"}, &members)
	if len(members.Members) != 6 {
		t.Fatalf("members across replicas: %+v", members)
	}
}

func TestDirectCrossesReplicas(t *testing.T) {
	nodes := cluster(t, 2)
	alice := nodes[0].DialName(t, "alice")
	bob1 := nodes[1].DialName(t, "bob")
	bob2 := nodes[0].DialName(t, "bob")
	alice.OK("direct", map[string]any{"to": "bob", "text": "hi"}, nil)
	for _, c := range []*chattest.Client{bob1, bob2} {
		if e := c.WaitFor("direct", nil); e.Str("text") != "hi" {
			t.Fatalf("got %s", e)
		}
	}
}

func TestNoticeAndKickCrossReplicas(t *testing.T) {
	nodes := cluster(t, 2, func(c *config.Config) { c.Chat.ApiKey = "key" })
	alice := nodes[1].DialName(t, "alice")
	bob := nodes[1].DialName(t, "bob")
	postJSON(t, nodes[0], "/api/broadcast", "key", map[string]any{"text": "maintenance"}, 200)
	for _, c := range []*chattest.Client{alice, bob} {
		if e := c.WaitFor("notice", nil); e.Str("text") != "maintenance" {
			t.Fatalf("notice %s", e)
		}
	}
	req, _ := http.NewRequest(http.MethodDelete, nodes[0].URL+"/api/users/bob/connections", nil)
	req.Header.Set("X-API-Key", "key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var kick struct{ Closed int }
	_ = json.NewDecoder(resp.Body).Decode(&kick)
	resp.Body.Close()
	if kick.Closed != 1 {
		t.Fatalf("kick closed %d", kick.Closed)
	}
	if code := bob.CloseCode(); code != 4003 {
		t.Fatalf("bob closed with %d, want 4003", code)
	}
}

func TestIdempotentKeyHoldsAcrossReplicas(t *testing.T) {
	nodes := cluster(t, 2)
	a := nodes[0].DialName(t, "alice")
	b := nodes[1].DialName(t, "alice") // the same user, retrying from another replica
	a.Join("r")
	b.Join("r")
	var first, retry struct{ Seq int64 }
	a.OK("send", map[string]any{"room": "r", "text": "once", "key": "same"}, &first)
	b.OK("send", map[string]any{"room": "r", "text": "once", "key": "same"}, &retry)
	if first != retry {
		t.Fatalf("first %+v, retry %+v", first, retry)
	}
	a.Message("r")
	a.Quiet("message", 200*time.Millisecond)
}

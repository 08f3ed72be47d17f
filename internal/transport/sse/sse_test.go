package sse_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/memory"
	"chat/internal/chat"
	"chat/internal/chattest"
	"chat/internal/transport/sse"
)

// Over HTTP/2 a stream cannot take its connection over: it stays in its
// request and writes through net/http, with the same events, commands and
// end of session as over HTTP/1.1 (which the end-to-end tests use).
func TestStreamOverHTTP2StaysInTheRequest(t *testing.T) {
	cfg := chattest.Config(t).Chat
	node, err := chat.NewNode(cfg, func(w chat.Wiring) (broker.Broker, error) {
		return memory.NewBackend(broker.Options{}).Node(w.Handler), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(sse.New(node).ServeSSE))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	resp, err := srv.Client().Get(srv.URL + "/sse?name=ann")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s, want HTTP/2 200", resp.Proto, resp.Status)
	}
	events := make(chan map[string]any, 16)
	go func() {
		defer close(events)
		r := bufio.NewReader(resp.Body)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var e map[string]any
				if json.Unmarshal([]byte(data), &e) == nil {
					events <- e
				}
			}
		}
	}()
	next := func(typ string) map[string]any {
		t.Helper()
		for {
			select {
			case e, ok := <-events:
				if !ok {
					t.Fatalf("the stream ended before a %s event", typ)
				}
				if e["type"] == typ {
					return e
				}
			case <-time.After(chattest.Timeout):
				t.Fatalf("no %s event", typ)
			}
		}
	}
	welcome := next("welcome")
	session, key := welcome["session"].(string), welcome["sessionKey"].(string)
	if _, err := node.PostCommands(t.Context(), session, key, []byte(`{"type":"join","id":1,"room":"lobby"}`+"\n"+`{"type":"send","id":2,"room":"lobby","text":"hi"}`)); err != nil {
		t.Fatal(err)
	}
	if m := next("message"); m["text"] != "hi" || m["seq"] != float64(1) {
		t.Fatalf("message %v", m)
	}
	resp.Body.Close() // the client goes away: the session ends
	deadline := time.Now().Add(chattest.Timeout)
	for node.Stats().Connections != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the session did not end when its stream closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

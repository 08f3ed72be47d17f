package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"

	"github.com/alicebob/miniredis/v2"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
)

func TestRedisOutageAnswersUnavailableAndRecovers(t *testing.T) {
	m := miniredis.RunT(t)
	s := chattest.Start(t, fast, chattest.WithRedis(m.Addr(), "outage"))
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("r")
	bob.Join("r")
	alice.Say("r", "before")
	bob.Message("r")

	m.Close()
	start := time.Now()
	alice.Fail("send", map[string]any{"room": "r", "text": "during", "key": "k1"}, protocol.CodeUnavailable)
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("unavailable took %v", d)
	}
	if status := getStatus(t, s.URL+"/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during outage: %d", status)
	}
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	// Delivery resumes: the retry with the same key publishes once.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := alice.Do("send", map[string]any{"room": "r", "text": "during", "key": "k1"})
		if r.Err == nil {
			break
		}
		if r.Err.Code != protocol.CodeUnavailable || time.Now().After(deadline) {
			t.Fatalf("send after restart: %+v", r.Err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	m2 := bob.WaitFor("message", func(e chattest.Event) bool { return e.Str("text") == "during" })
	if m2.Int("seq") != 2 {
		t.Fatalf("after restart got %s", m2)
	}
	if status := getStatus(t, s.URL+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz after outage: %d", status)
	}
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRedisRestartedEmptyStartsANewEpoch(t *testing.T) {
	m := miniredis.RunT(t)
	s := chattest.Start(t, fast, chattest.WithRedis(m.Addr(), "empty"))
	alice := s.DialName(t, "alice")
	j := alice.Join("r")
	alice.Say("r", "1")
	alice.Say("r", "2")
	m.FlushAll() // Redis came back with nothing
	late := s.DialName(t, "bob")
	var r chattest.JoinResult
	late.OK("join", map[string]any{"room": "r", "since": map[string]any{"epoch": j.Epoch, "seq": 1}}, &r)
	if r.Recovered || r.Epoch == j.Epoch {
		t.Fatalf("recovery across a lost history: %+v", r)
	}
}

func TestPubSubKillsLoseNothing(t *testing.T) {
	addr := os.Getenv("CHAT_TEST_REDIS")
	if addr == "" {
		if chattest.Required() {
			t.Fatal("CHAT_TEST_REDIS is required")
		}
		t.Skip("needs a real Redis (CHAT_TEST_REDIS) for CLIENT KILL")
	}
	nodes := cluster(t, 2, func(c *config.Config) { c.Redis.Addr = addr })
	reader := nodes[1].DialName(t, "reader")
	reader.Join("flow")
	sender := nodes[0].DialName(t, "sender")
	sender.Join("flow")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()

	const total = 300
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 5; i++ {
			time.Sleep(60 * time.Millisecond)
			_ = rdb.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err()
		}
	}()
	for i := 1; i <= total; i++ {
		// A reply of unavailable is an unknown outcome: retry with the key.
		key := fmt.Sprint("k", i)
		for {
			r := sender.Do("send", map[string]any{"room": "flow", "text": key, "key": key})
			if r.Err == nil {
				break
			}
			if r.Err.Code != protocol.CodeUnavailable {
				t.Fatalf("send: %+v", r.Err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	for want := int64(1); want <= total; want++ {
		m := reader.WaitFor("message", nil)
		if m.Int("seq") != want {
			t.Fatalf("reader got seq %d, want %d", m.Int("seq"), want)
		}
	}
	reader.Quiet("message", 300*time.Millisecond)
	reader.Quiet("resync", 1)
}

// TestRealRedisStoppedAndRestartedEmpty runs a redis-server of its own,
// stops it while clients are connected and starts it again, empty, on the
// same port.
func TestRealRedisStoppedAndRestartedEmpty(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if chattest.Required() {
			t.Fatal("redis-server is required")
		}
		t.Skip("needs redis-server")
	}
	port := chattest.FreePort(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprint("127.0.0.1:", port)})
		defer rdb.Close()
		deadline := time.Now().Add(5 * time.Second)
		for rdb.Ping(context.Background()).Err() != nil {
			if time.Now().After(deadline) {
				t.Fatal("redis-server did not start")
			}
			time.Sleep(20 * time.Millisecond)
		}
		return cmd
	}
	redisProc := start()
	s := chattest.Start(t, fast, chattest.WithRedis(fmt.Sprint("127.0.0.1:", port), "restart"))
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("r")
	j := bob.Join("r")
	alice.Say("r", "before")
	bob.Message("r")

	_ = redisProc.Process.Kill()
	_ = redisProc.Wait()
	alice.Fail("send", map[string]any{"room": "r", "text": "during", "key": "k1"}, protocol.CodeUnavailable)
	if status := getStatus(t, s.URL+"/readyz"); status != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while Redis is down: %d", status)
	}
	start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := alice.Do("send", map[string]any{"room": "r", "text": "during", "key": "k1"})
		if r.Err == nil {
			break
		}
		if r.Err.Code != protocol.CodeUnavailable || time.Now().After(deadline) {
			t.Fatalf("send after the restart: %+v", r.Err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Redis came back empty: the room's sequence starts again in a new
	// epoch, and the connected member is told to resync and gets it.
	bob.WaitFor("resync", nil)
	m := bob.WaitFor("message", func(e chattest.Event) bool { return e.Str("text") == "during" })
	if m.Str("epoch") == j.Epoch {
		t.Fatalf("same epoch after Redis lost everything: %s", m)
	}
	if status := getStatus(t, s.URL+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz after the restart: %d", status)
	}
}

// A connection that cannot start (its user's topic cannot be subscribed)
// completes the handshake and is closed with 1013 "try again later":
// the held 101 goes out with the close frame.
func TestConnectingWhileRedisIsDownIsClosedWith1013(t *testing.T) {
	m := miniredis.RunT(t)
	s := chattest.Start(t, fast, chattest.WithRedis(m.Addr(), "down"))
	m.Close()
	start := time.Now()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial(s.WSURL+"?name=early", nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := ws.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseTryAgainLater) {
		t.Fatalf("first read: %q, %v; want close 1013", data, err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("the close took %v; the broker calls are bounded at 5 s", d)
	}
}

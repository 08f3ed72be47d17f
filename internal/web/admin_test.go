package web_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
)

const apiKey = "test-admin-key"

func withAPIKey(c *config.Config) { c.Chat.ApiKey = apiKey }

// admin calls an admin route of the REST API.
func admin(t *testing.T, s *chattest.Server, method, path, body string) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d %s", method, path, resp.StatusCode, b)
	}
}

// TestServerNoticeShowsInTheRoom: a notice broadcast through the REST API
// shows in the conversation of its room, as text.
func TestServerNoticeShowsInTheRoom(t *testing.T) {
	s := chattest.Start(t, withAPIKey)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	alice.joinRoom("lobby")
	admin(t, s, http.MethodPost, "/api/broadcast", `{"text":"Maintenance at <b>18:00</b>","room":"lobby"}`)
	alice.waitJS("notice shown", `[...document.querySelectorAll('#messages .notice .text')].some((e) =>
		e.textContent === 'Maintenance at <b>18:00</b>')`)
	if n := alice.str(`String(document.querySelectorAll('#messages b').length)`); n != "0" {
		t.Fatalf("notice rendered as HTML")
	}
}

// TestKickedPageStaysOffline: a page disconnected by an administrator says
// so and does not reconnect by itself.
func TestKickedPageStaysOffline(t *testing.T) {
	s := chattest.Start(t, withAPIKey)
	browser := newBrowser(t)
	alice := openTab(t, browser, s.URL+"/", "alice")
	alice.pickName("alice")
	admin(t, s, http.MethodDelete, "/api/users/alice/connections", "")
	alice.waitJS("offline, saying why", `document.getElementById('status').dataset.state === 'offline' &&
		/administrator/.test(document.getElementById('status').textContent)`)
	time.Sleep(1500 * time.Millisecond) // long enough for several reconnect attempts
	var u struct {
		Online bool `json:"online"`
	}
	resp, err := http.Get(s.URL + "/api/users/alice")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &u); err != nil || u.Online {
		t.Fatalf("alice after the kick: %s (%v)", b, err)
	}
}

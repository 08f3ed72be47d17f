package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"chat/internal/broker"
	"chat/internal/broker/memory"
	"chat/internal/chat"
	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"

	"github.com/golang-jwt/jwt/v4"
)

// privateRooms makes every room but lobby and pub-* private (SPEC §13).
func privateRooms(c *config.Config) { c.Chat.PublicRooms = []string{"lobby", "pub-*"} }

// Without access, join, history and members of a private room answer
// forbidden; public rooms (Chat.PublicRooms) behave as before.
func TestPrivateRoomIsForbiddenWithoutAccess(t *testing.T) {
	s := startAdmin(t, fast, privateRooms)
	c := s.DialName(t, "ann")
	c.Join("lobby")
	c.Join("pub-games")
	for _, cmd := range []string{"join", "history", "members"} {
		c.Fail(cmd, map[string]any{"room": "team"}, protocol.CodeForbidden)
	}
	c.Fail("join", map[string]any{"room": "bad room"}, protocol.CodeInvalidRoom)
	// The rooms command lists only rooms the user may enter.
	call(t, s, http.MethodPut, "/api/rooms/team/users/bob", apiKey, nil).ok(t, nil)
	s.DialName(t, "bob").Join("team")
	var list protocol.RoomsResult
	c.OK("rooms", nil, &list)
	var names []string
	for _, r := range list.Rooms {
		names = append(names, r.Room)
	}
	if strings.Join(names, ",") != "lobby,pub-games" {
		t.Fatalf("ann's rooms: %v", names)
	}
}

// The token's rooms claim opens the private rooms it matches, and only
// those; a rooms claim of the wrong type makes the token invalid (401).
func TestTokenRoomsClaimOpensPrivateRooms(t *testing.T) {
	s := chattest.Start(t, fast, privateRooms, func(c *config.Config) { c.Auth.AccessSecret = accessSecret })
	c := s.Dial(t, "token="+hs256(t, jwt.MapClaims{"name": "ann", "rooms": []string{"team-*"}}))
	c.Join("team-a")
	c.Say("team-a", "hi")
	c.Fail("join", map[string]any{"room": "other"}, protocol.CodeForbidden)
	for _, rooms := range []any{"team-*", []any{1}, []any{"["}, []any{""}, map[string]any{"a": 1}} {
		_, resp, err := chattest.DialURL(t, s.WSURL+"?token="+hs256(t, jwt.MapClaims{"name": "ann", "rooms": rooms}), nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("rooms claim %#v: %v %v, want 401", rooms, resp, err)
		}
	}
}

// A grant through the admin API of replica A joins every connection of
// the user, on A and on B, with a subscribed event; members hear of each;
// the grants list shows it. A revoke through B removes them (removed, and
// members get left) and takes effect at once: the next send is refused.
func TestGrantAndRevokeAcrossReplicas(t *testing.T) {
	nodes := cluster(t, 2, privateRooms, func(c *config.Config) { c.Chat.ApiKey = apiKey })
	a, b := nodes[0], nodes[1]
	call(t, a, http.MethodPut, "/api/rooms/team/users/bob", apiKey, nil).ok(t, nil)
	bob := a.DialName(t, "bob")
	bob.Join("team")
	bob.Say("team", "before ann")
	annA, annB := a.DialName(t, "ann"), b.DialName(t, "ann")
	annA.Fail("join", map[string]any{"room": "team"}, protocol.CodeForbidden)

	var granted struct {
		Room, User  string
		Connections int
	}
	call(t, b, http.MethodPut, "/api/rooms/team/users/ann", apiKey, nil).ok(t, &granted)
	if granted.Room != "team" || granted.User != "ann" || granted.Connections != 2 {
		t.Fatalf("grant answered %+v", granted)
	}
	for i, c := range []*chattest.Client{annA, annB} {
		e := c.WaitFor("subscribed", nil)
		var res protocol.JoinResult
		if err := e.Decode(&res); err != nil || res.Room != "team" || res.Seq != 1 || len(res.History) != 1 || len(res.Members) != 2 {
			t.Fatalf("ann %d: subscribed %s", i, e)
		}
	}
	for range 2 {
		bob.WaitFor("joined", func(e chattest.Event) bool { return e.Str("user") == "ann" })
	}
	var grants struct {
		Room  string
		Users []string
	}
	call(t, a, http.MethodGet, "/api/rooms/team/grants", apiKey, nil).ok(t, &grants)
	if strings.Join(grants.Users, ",") != "ann,bob" {
		t.Fatalf("grants %+v", grants)
	}
	annB.Say("team", "ann is in")
	bob.WaitFor("message", func(e chattest.Event) bool { return e.Str("text") == "ann is in" })

	call(t, a, http.MethodDelete, "/api/rooms/team/users/ann", apiKey, nil).ok(t, nil)
	// At once: the grant is gone for every command, wherever it runs.
	annA.Fail("history", map[string]any{"room": "team"}, protocol.CodeForbidden)
	for _, c := range []*chattest.Client{annA, annB} {
		if e := c.WaitFor("removed", nil); e.Str("room") != "team" {
			t.Fatalf("removed %s", e)
		}
		if r := c.Do("send", map[string]any{"room": "team", "text": "after"}); r.Err == nil ||
			(r.Err.Code != protocol.CodeForbidden && r.Err.Code != protocol.CodeNotMember) {
			t.Fatalf("send after the revoke: %s %+v", r.Result, r.Err)
		}
	}
	for range 2 {
		bob.WaitFor("left", func(e chattest.Event) bool { return e.Str("user") == "ann" })
	}
	call(t, b, http.MethodGet, "/api/rooms/team/grants", apiKey, nil).ok(t, &grants)
	if strings.Join(grants.Users, ",") != "bob" {
		t.Fatalf("grants after the revoke %+v", grants)
	}
	call(t, a, http.MethodPut, "/api/rooms/bad%20room/users/ann", apiKey, nil).wantError(t, http.StatusBadRequest, protocol.CodeInvalidRoom)
	call(t, a, http.MethodPut, "/api/rooms/team/users/system", apiKey, nil).wantError(t, http.StatusBadRequest, protocol.CodeBadRequest)
}

// A revoke while the user is sending: every send acknowledged before it is
// delivered, and none after it.
func TestRevokeWhileSending(t *testing.T) {
	s := startAdmin(t, fast, privateRooms)
	call(t, s, http.MethodPut, "/api/rooms/team/users/ann", apiKey, nil).ok(t, nil)
	call(t, s, http.MethodPut, "/api/rooms/team/users/bob", apiKey, nil).ok(t, nil)
	ann, bob := s.DialName(t, "ann"), s.DialName(t, "bob")
	ann.Join("team")
	bob.Join("team")
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(50 * time.Millisecond)
		call(t, s, http.MethodDelete, "/api/rooms/team/users/ann", apiKey, nil).ok(t, nil)
	}()
	var acked []int64
	for i := 0; ; i++ {
		r := ann.Do("send", map[string]any{"room": "team", "text": "x"})
		if r.Err != nil {
			if r.Err.Code != protocol.CodeForbidden && r.Err.Code != protocol.CodeNotMember {
				t.Fatalf("send %d: %+v", i, r.Err)
			}
			break
		}
		var res protocol.SendResult
		r.Decode(t, &res)
		acked = append(acked, res.Seq)
		if i == 10000 {
			t.Fatal("the revoke never took effect")
		}
	}
	<-done
	for _, seq := range acked {
		if m := bob.Message("team"); m.Seq != seq {
			t.Fatalf("bob got seq %d, want %d", m.Seq, seq)
		}
	}
	bob.Quiet("message", 300*time.Millisecond)
}

// The admin API reaches one connection: a direct message to it alone, and
// a kick of it alone, on any replica; an unknown connection is 404.
func TestDirectAndKickOneConnectionAcrossReplicas(t *testing.T) {
	nodes := cluster(t, 2, func(c *config.Config) { c.Chat.ApiKey = apiKey })
	a, b := nodes[0], nodes[1]
	annA, annB := a.DialName(t, "ann"), b.DialName(t, "ann")
	idB := annB.Welcome.Str("client")
	call(t, a, http.MethodPost, "/api/clients/"+idB+"/messages", apiKey, map[string]any{"text": "just you", "from": "ops"}).ok(t, nil)
	if e := annB.WaitFor("direct", nil); e.Str("text") != "just you" || e.Str("from") != "ops" || e.Str("to") != "ann" {
		t.Fatalf("direct %s", e)
	}
	annA.Quiet("direct", 300*time.Millisecond)
	var kicked struct{ Client string }
	call(t, a, http.MethodDelete, "/api/clients/"+idB, apiKey, nil).ok(t, &kicked)
	if kicked.Client != idB {
		t.Fatalf("kick answered %+v", kicked)
	}
	if code := annB.CloseCode(); code != protocol.CloseKicked {
		t.Fatalf("close code %d", code)
	}
	annA.OK("rooms", nil, nil) // the other connection stays
	eventually(t, "the kicked connection is gone", func() bool {
		return call(t, b, http.MethodDelete, "/api/clients/"+idB, apiKey, nil).status == http.StatusNotFound
	})
	call(t, a, http.MethodPost, "/api/clients/nobody-1/messages", apiKey, map[string]any{"text": "x"}).wantError(t, http.StatusNotFound, protocol.CodeClientOffline)
	call(t, a, http.MethodDelete, "/api/clients/nobody-1", apiKey, nil).wantError(t, http.StatusNotFound, protocol.CodeClientOffline)
}

// A connection whose token has an exp is closed with 4001 when it expires,
// on a WebSocket and on an SSE stream.
func TestExpiredTokenClosesTheConnectionWith4001(t *testing.T) {
	s := startAuth(t)
	exp := time.Now().Add(1500*time.Millisecond).Unix() + 1
	tok := hs256(t, jwt.MapClaims{"name": "ann", "exp": exp})
	ws := s.Dial(t, "token="+tok)
	sse := s.DialSSE(t, "token="+tok)
	ws.Join("lobby")
	for _, c := range []*chattest.Client{ws, sse} {
		if code := c.CloseCode(); code != protocol.CloseTokenExpired {
			t.Fatalf("close code %d, want 4001", code)
		}
	}
	if time.Now().Unix() < exp-1 {
		t.Fatal("closed before the token expired")
	}
}

// A bad pattern in Chat.PublicRooms stops the node from starting, with a
// message that names the key.
func TestBadPublicRoomsPatternRefusesToStart(t *testing.T) {
	cfg := chattest.Config(t).Chat
	cfg.PublicRooms = []string{"lobby", "team-["}
	_, err := chat.NewNode(cfg, func(w chat.Wiring) (broker.Broker, error) {
		return memory.NewBackend(broker.Options{}).Node(w.Handler), nil
	})
	if err == nil || !strings.Contains(err.Error(), "Chat.PublicRooms") || !strings.Contains(err.Error(), "team-[") {
		t.Fatalf("err %v", err)
	}
}

// With auth on, the public REST reads need a token (or the admin key) and
// apply the reader's room access; /healthz and /readyz stay open.
func TestRESTReadsNeedATokenAndApplyRoomAccess(t *testing.T) {
	s := chattest.Start(t, fast, privateRooms, func(c *config.Config) {
		c.Auth.AccessSecret = accessSecret
		c.Chat.ApiKey = apiKey
	})
	tok := hs256(t, jwt.MapClaims{"name": "ann", "rooms": []string{"team-*"}})
	ann := s.Dial(t, "token="+tok)
	ann.Join("lobby")
	ann.Join("team-a")
	ann.Say("team-a", "secret")
	call(t, s, http.MethodPut, "/api/rooms/hidden/users/ann", apiKey, nil).ok(t, nil)
	ann.WaitFor("subscribed", nil)

	bearer := func(path, token string) apiResp {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, s.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return do(t, req)
	}
	for _, path := range []string{"/api/rooms", "/api/rooms/lobby/members", "/api/rooms/lobby/messages", "/api/users/ann"} {
		bearer(path, "").wantError(t, http.StatusUnauthorized, protocol.CodeUnauthorized)
		bearer(path, "not-a-token").wantError(t, http.StatusUnauthorized, protocol.CodeUnauthorized)
		if r := bearer(path, tok); r.status != http.StatusOK {
			t.Fatalf("%s with a token: %d %s", path, r.status, r.body)
		}
		if r := call(t, s, http.MethodGet, path, apiKey, nil); r.status != http.StatusOK {
			t.Fatalf("%s with the admin key: %d %s", path, r.status, r.body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if r := bearer(path, ""); r.status != http.StatusOK {
			t.Fatalf("%s: %d", path, r.status)
		}
	}
	// Room access: the token's team-* and the grant of "hidden" for ann;
	// bob has neither.
	bob := hs256(t, jwt.MapClaims{"name": "bob"})
	var msgs struct{ Messages []protocol.Message }
	bearer("/api/rooms/team-a/messages", tok).ok(t, &msgs)
	if len(msgs.Messages) != 1 || msgs.Messages[0].Text != "secret" {
		t.Fatalf("messages %+v", msgs)
	}
	bearer("/api/rooms/team-a/messages", bob).wantError(t, http.StatusForbidden, protocol.CodeForbidden)
	bearer("/api/rooms/team-a/members", bob).wantError(t, http.StatusForbidden, protocol.CodeForbidden)
	bearer("/api/rooms/hidden/members", tok).ok(t, nil)
	bearer("/api/rooms/hidden/members", bob).wantError(t, http.StatusForbidden, protocol.CodeForbidden)
	roomsOf := func(token string) string {
		var list struct{ Rooms []struct{ Room string } }
		bearer("/api/rooms", token).ok(t, &list)
		var names []string
		for _, r := range list.Rooms {
			names = append(names, r.Room)
		}
		return strings.Join(names, ",")
	}
	if got := roomsOf(tok); got != "hidden,lobby,team-a" {
		t.Fatalf("ann's rooms: %q", got)
	}
	if got := roomsOf(bob); got != "lobby" {
		t.Fatalf("bob's rooms: %q", got)
	}
}

// Without auth the REST reader is anonymous: it reads the public rooms,
// and a private one only with the admin key.
func TestAnonymousRESTReadsSeeOnlyPublicRooms(t *testing.T) {
	s := startAdmin(t, fast, privateRooms)
	call(t, s, http.MethodPost, "/api/rooms/team/messages", apiKey, map[string]any{"text": "private"}).ok(t, nil)
	call(t, s, http.MethodGet, "/api/rooms/team/messages", "", nil).wantError(t, http.StatusForbidden, protocol.CodeForbidden)
	call(t, s, http.MethodGet, "/api/rooms/team/messages", apiKey, nil).ok(t, nil)
	call(t, s, http.MethodGet, "/api/rooms/lobby/messages", "", nil).ok(t, nil)
}

// GET /api/cluster lists every live replica with its connections, and the
// cluster's connections, distinct users and rooms.
func TestClusterListsEveryReplica(t *testing.T) {
	nodes := cluster(t, 2, func(c *config.Config) { c.Chat.ApiKey = apiKey })
	a, b := nodes[0], nodes[1]
	a.DialName(t, "ann").Join("lobby")
	a.DialName(t, "ann")
	b.DialName(t, "bob").Join("games")
	type clusterResp struct {
		Nodes []struct {
			Node          string
			Connections   int
			UptimeSeconds int64
		}
		Connections, Users, Rooms int
	}
	var got clusterResp
	eventually(t, "both replicas announced with their connections", func() bool {
		got = clusterResp{}
		call(t, b, http.MethodGet, "/api/cluster", apiKey, nil).ok(t, &got)
		return len(got.Nodes) == 2 && got.Connections == 3
	})
	byNode := map[string]int{}
	for _, n := range got.Nodes {
		byNode[n.Node] = n.Connections
	}
	if byNode[a.Node.ID] != 2 || byNode[b.Node.ID] != 1 || got.Users != 2 || got.Rooms != 2 {
		t.Fatalf("cluster %+v", got)
	}
	call(t, a, http.MethodGet, "/api/cluster", "", nil).wantError(t, http.StatusForbidden, protocol.CodeForbidden)
}

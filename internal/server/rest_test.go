package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"
)

// apiKey is the admin key of the servers started by startAdmin.
const apiKey = "test-api-key"

// startAdmin runs the service with the admin API enabled under apiKey.
func startAdmin(t *testing.T, opts ...func(*config.Config)) *chattest.Server {
	t.Helper()
	return chattest.Start(t, append([]func(*config.Config){func(c *config.Config) { c.Chat.ApiKey = apiKey }}, opts...)...)
}

// apiResp is one answer of the REST API.
type apiResp struct {
	status int
	header http.Header
	body   []byte
}

// call sends one REST request; body, when not nil, is sent as JSON (a
// string or []byte is sent as is). key, when not empty, is the X-API-Key.
func call(t *testing.T, s *chattest.Server, method, path, key string, body any) apiResp {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) apiResp {
	t.Helper()
	client := http.Client{Timeout: chattest.Timeout}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return apiResp{status: resp.StatusCode, header: resp.Header, body: data}
}

// ok asserts a 200 and decodes the body into v.
func (r apiResp) ok(t *testing.T, v any) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("HTTP %d %s, want 200", r.status, r.body)
	}
	if v == nil {
		return
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// wantError asserts an error answer: status, a JSON body {"code","message"}
// with code (any code when code is ""), and a message.
func (r apiResp) wantError(t *testing.T, status int, code string) protocol.Error {
	t.Helper()
	if r.status != status {
		t.Fatalf("HTTP %d %s, want %d", r.status, r.body, status)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var fields map[string]any
	if err := json.Unmarshal(r.body, &fields); err != nil {
		t.Fatalf("error body %q is not a JSON object: %v", r.body, err)
	}
	var e protocol.Error
	_ = json.Unmarshal(r.body, &e)
	if code != "" && e.Code != code {
		t.Fatalf("error %s, want code %q", r.body, code)
	}
	if e.Code == "" || e.Message == "" {
		t.Fatalf("error body %s lacks code or message", r.body)
	}
	return e
}

// eventually polls cond until it holds, failing the test after the harness timeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(chattest.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, chattest.Timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type roomInfo struct {
	Room    string `json:"room"`
	Members int    `json:"members"`
	Seq     int64  `json:"seq"`
}

type roomsResp struct {
	Rooms []roomInfo `json:"rooms"`
}

type membersResp struct {
	Room    string            `json:"room"`
	Members []protocol.Member `json:"members"`
}

type messagesResp struct {
	Room     string             `json:"room"`
	Messages []protocol.Message `json:"messages"`
}

type userResp struct {
	User        string `json:"user"`
	Online      bool   `json:"online"`
	Connections int    `json:"connections"`
}

func listRooms(t *testing.T, s *chattest.Server) []roomInfo {
	t.Helper()
	var r roomsResp
	call(t, s, http.MethodGet, "/api/rooms", "", nil).ok(t, &r)
	if r.Rooms == nil {
		t.Fatalf("rooms is null, want a list")
	}
	return r.Rooms
}

func findRoom(rooms []roomInfo, name string) (roomInfo, bool) {
	for _, r := range rooms {
		if r.Room == name {
			return r, true
		}
	}
	return roomInfo{}, false
}

func TestListRoomsCountsDistinctUsersAndHeadSeq(t *testing.T) {
	s := chattest.Start(t)
	alice1 := s.DialName(t, "alice")
	alice2 := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	carol := s.DialName(t, "carol")
	alice1.Join("lobby")
	alice2.Join("lobby")
	bob.Join("lobby")
	carol.Join("quiet")
	for _, text := range []string{"one", "two", "three"} {
		alice1.Say("lobby", text)
	}

	got := listRooms(t, s)
	want := []roomInfo{{Room: "lobby", Members: 2, Seq: 3}, {Room: "quiet", Members: 1, Seq: 0}}
	if len(got) != len(want) {
		t.Fatalf("rooms %+v, want %+v", got, want)
	}
	for _, w := range want {
		if r, ok := findRoom(got, w.Room); !ok || r != w {
			t.Errorf("room %s: got %+v, want %+v (all: %+v)", w.Room, r, w, got)
		}
	}
}

func TestListRoomsOmitsRoomsWithNobodyPresent(t *testing.T) {
	s := startAdmin(t)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("left-room")
	bob.Join("closed-room")
	alice.Say("left-room", "hello")
	// A room that only ever had REST messages has history but no one present.
	call(t, s, http.MethodPost, "/api/rooms/empty-room/messages", apiKey, map[string]any{"text": "anyone?"}).ok(t, nil)

	alice.OK("leave", map[string]any{"room": "left-room"}, nil)
	_ = bob.WS.Close()

	eventually(t, "rooms empty after leave and disconnect", func() bool { return len(listRooms(t, s)) == 0 })
}

func TestListRoomsIsAnEmptyListWithoutRooms(t *testing.T) {
	s := chattest.Start(t)
	r := call(t, s, http.MethodGet, "/api/rooms", "", nil)
	r.ok(t, nil)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["rooms"]) != "[]" {
		t.Fatalf("body %s, want rooms: []", r.body)
	}
}

func TestRoomMembersListsUsersWithConnectionCounts(t *testing.T) {
	s := chattest.Start(t)
	bob1 := s.DialName(t, "bob")
	bob2 := s.DialName(t, "bob")
	alice := s.DialName(t, "alice")
	outsider := s.DialName(t, "outsider")
	bob1.Join("lobby")
	bob2.Join("lobby")
	alice.Join("lobby")
	outsider.Join("elsewhere")

	var got membersResp
	call(t, s, http.MethodGet, "/api/rooms/lobby/members", "", nil).ok(t, &got)
	want := []protocol.Member{{User: "alice", Connections: 1}, {User: "bob", Connections: 2}}
	if got.Room != "lobby" || len(got.Members) != len(want) {
		t.Fatalf("got %+v, want room lobby, members %+v", got, want)
	}
	for i := range want {
		if got.Members[i] != want[i] {
			t.Fatalf("members %+v, want %+v (sorted by user)", got.Members, want)
		}
	}
}

func TestRoomMembersOfAnEmptyRoomIsAnEmptyList(t *testing.T) {
	s := chattest.Start(t)
	r := call(t, s, http.MethodGet, "/api/rooms/nobody-here/members", "", nil)
	r.ok(t, nil)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["room"]) != `"nobody-here"` || string(raw["members"]) != "[]" {
		t.Fatalf("body %s, want room nobody-here and members []", r.body)
	}
}

// badRooms are room names that break ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$.
var badRooms = map[string]string{
	"leading dash":  "-lobby",
	"leading dot":   ".lobby",
	"space":         "lob by",
	"non-ASCII":     "café",
	"65 characters": strings.Repeat("a", 65),
}

func TestRoomRoutesRefuseABadRoomName(t *testing.T) {
	s := startAdmin(t)
	for name, room := range badRooms {
		path := "/api/rooms/" + url.PathEscape(room)
		for _, route := range []struct {
			method, path, key string
			body              any
		}{
			{http.MethodGet, path + "/members", "", nil},
			{http.MethodGet, path + "/messages", "", nil},
			{http.MethodPost, path + "/messages", apiKey, map[string]any{"text": "hi"}},
			{http.MethodPost, "/api/broadcast", apiKey, map[string]any{"text": "hi", "room": room}},
		} {
			t.Run(name+" "+route.method+" "+route.path, func(t *testing.T) {
				call(t, s, route.method, route.path, route.key, route.body).wantError(t, http.StatusBadRequest, protocol.CodeInvalidRoom)
			})
		}
	}
}

func TestRoomMessagesPagesHistoryOldestFirst(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	join := alice.Join("lobby")
	for i := 1; i <= 5; i++ {
		alice.Say("lobby", "m"+chattest.Itoa(i))
	}
	cases := []struct {
		name  string
		query string
		seqs  []int64
	}{
		{"default returns all", "", []int64{1, 2, 3, 4, 5}},
		{"limit keeps the latest", "?limit=2", []int64{4, 5}},
		{"before pages back", "?before=4&limit=2", []int64{2, 3}},
		{"before alone", "?before=3", []int64{1, 2}},
		{"limit 100 is allowed", "?limit=100", []int64{1, 2, 3, 4, 5}},
		{"limit 1 is allowed", "?limit=1", []int64{5}},
		{"before the first", "?before=1", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got messagesResp
			call(t, s, http.MethodGet, "/api/rooms/lobby/messages"+tc.query, "", nil).ok(t, &got)
			if got.Room != "lobby" || got.Messages == nil {
				t.Fatalf("got %+v, want room lobby and a list", got)
			}
			if len(got.Messages) != len(tc.seqs) {
				t.Fatalf("got %d messages %+v, want seqs %v", len(got.Messages), got.Messages, tc.seqs)
			}
			for i, m := range got.Messages {
				if m.Seq != tc.seqs[i] || m.Text != "m"+chattest.Itoa(int(m.Seq)) || m.From != "alice" ||
					m.Room != "lobby" || m.Type != "message" || m.Epoch != join.Epoch || m.ID == "" || m.TS == 0 {
					t.Fatalf("message %d: %+v, want seq %d from alice in epoch %s", i, m, tc.seqs[i], join.Epoch)
				}
			}
		})
	}
}

// limit=0 is the default page (SPEC §11), like no limit at all.
func TestRoomMessagesLimitZeroIsTheDefaultPage(t *testing.T) {
	s := chattest.Start(t, fast)
	alice := s.DialName(t, "alice")
	alice.Join("lobby")
	for i := 1; i <= 60; i++ {
		alice.Say("lobby", "m"+chattest.Itoa(i))
	}
	for _, query := range []string{"", "?limit=0", "?limit=0&before=61"} {
		var got messagesResp
		call(t, s, http.MethodGet, "/api/rooms/lobby/messages"+query, "", nil).ok(t, &got)
		if n := len(got.Messages); n != 50 || got.Messages[0].Seq != 11 || got.Messages[n-1].Seq != 60 {
			t.Fatalf("%q: %d messages, want seqs 11..60", query, n)
		}
	}
}

func TestRoomMessagesRefusesALimitOutside1To100(t *testing.T) {
	s := chattest.Start(t)
	cases := []struct{ name, query string }{
		{"101", "?limit=101"},
		{"negative", "?limit=-1"},
		{"not a number", "?limit=many"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			call(t, s, http.MethodGet, "/api/rooms/lobby/messages"+tc.query, "", nil).wantError(t, http.StatusBadRequest, protocol.CodeBadRequest)
		})
	}
}

func TestRoomMessagesRefusesABadBefore(t *testing.T) {
	s := chattest.Start(t)
	cases := []struct{ name, query string }{
		{"not a number", "?before=x"},
		{"negative with a limit", "?before=-1&limit=10"},
		{"negative without a limit", "?before=-1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			call(t, s, http.MethodGet, "/api/rooms/lobby/messages"+tc.query, "", nil).wantError(t, http.StatusBadRequest, protocol.CodeBadRequest)
		})
	}
}

func TestGetUserCountsConnectionsOfAnOnlineUser(t *testing.T) {
	s := chattest.Start(t)
	s.DialName(t, "alice")
	s.DialName(t, "alice")
	s.DialName(t, "bob")
	var got userResp
	call(t, s, http.MethodGet, "/api/users/alice", "", nil).ok(t, &got)
	if want := (userResp{User: "alice", Online: true, Connections: 2}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestGetUserOfAnOfflineUserIsOfflineNot404(t *testing.T) {
	s := chattest.Start(t)
	s.DialName(t, "alice")
	var got userResp
	call(t, s, http.MethodGet, "/api/users/nobody", "", nil).ok(t, &got)
	if want := (userResp{User: "nobody", Online: false, Connections: 0}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestGetUserGoesOfflineWhenItsConnectionsClose(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	_ = alice.WS.Close()
	eventually(t, "alice offline", func() bool {
		var got userResp
		call(t, s, http.MethodGet, "/api/users/alice", "", nil).ok(t, &got)
		return !got.Online && got.Connections == 0
	})
}

// adminRoutes is one request to every admin route.
var adminRoutes = []struct {
	method, path string
	body         any
}{
	{http.MethodPost, "/api/rooms/lobby/messages", map[string]any{"text": "hi"}},
	{http.MethodPost, "/api/users/alice/messages", map[string]any{"text": "hi"}},
	{http.MethodPost, "/api/broadcast", map[string]any{"text": "hi"}},
	{http.MethodDelete, "/api/users/alice/connections", nil},
	{http.MethodGet, "/api/stats", nil},
}

func TestAdminRoutesWithoutAConfiguredKeyAreDisabled(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	alice.Join("lobby")
	for _, route := range adminRoutes {
		for _, key := range []string{"", "guess", apiKey} {
			t.Run(route.method+" "+route.path+" key="+key, func(t *testing.T) {
				call(t, s, route.method, route.path, key, route.body).wantError(t, http.StatusForbidden, protocol.CodeAPIDisabled)
			})
		}
	}
	// None of them acted: alice is still connected and got nothing.
	alice.Quiet("message", 100*time.Millisecond)
	alice.Quiet("direct", 0)
	alice.Quiet("notice", 0)
	alice.Join("still-here")
}

func TestAdminRoutesRefuseAMissingOrWrongKey(t *testing.T) {
	s := startAdmin(t)
	alice := s.DialName(t, "alice")
	alice.Join("lobby")
	for _, route := range adminRoutes {
		for name, key := range map[string]string{"missing": "", "wrong": "not-the-key", "prefix": apiKey[:4], "longer": apiKey + "x"} {
			t.Run(route.method+" "+route.path+" "+name, func(t *testing.T) {
				call(t, s, route.method, route.path, key, route.body).wantError(t, http.StatusForbidden, protocol.CodeForbidden)
			})
		}
	}
	alice.Quiet("message", 100*time.Millisecond)
	alice.Quiet("direct", 0)
	alice.Quiet("notice", 0)
	var got messagesResp
	call(t, s, http.MethodGet, "/api/rooms/lobby/messages", "", nil).ok(t, &got)
	if len(got.Messages) != 0 {
		t.Fatalf("a refused POST published %+v", got.Messages)
	}
}

type postRoomResp struct {
	Room string `json:"room"`
	Seq  int64  `json:"seq"`
	TS   int64  `json:"ts"`
}

func TestPostRoomMessageIsDeliveredWithTheNextSeq(t *testing.T) {
	s := startAdmin(t)
	alice := s.DialName(t, "alice")
	join := alice.Join("lobby")
	if seq := alice.Say("lobby", "first"); seq != 1 {
		t.Fatalf("first seq %d", seq)
	}
	alice.Message("lobby")

	cases := []struct {
		name     string
		body     map[string]any
		wantFrom string
	}{
		{"default from is system", map[string]any{"text": "hello from ops"}, "system"},
		{"explicit system", map[string]any{"text": "again", "from": "system"}, "system"},
		{"custom from", map[string]any{"text": "I am the bot", "from": "  bot  "}, "bot"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now().UnixMilli()
			var got postRoomResp
			call(t, s, http.MethodPost, "/api/rooms/lobby/messages", apiKey, tc.body).ok(t, &got)
			wantSeq := int64(i + 2)
			if got.Room != "lobby" || got.Seq != wantSeq || got.TS < before-1000 {
				t.Fatalf("got %+v, want room lobby, seq %d, ts about now", got, wantSeq)
			}
			m := alice.Message("lobby")
			if m.Seq != wantSeq || m.From != tc.wantFrom || m.Text != tc.body["text"] || m.Epoch != join.Epoch || m.TS != got.TS {
				t.Fatalf("event %+v, want seq %d from %s text %q", m, wantSeq, tc.wantFrom, tc.body["text"])
			}
		})
	}
}

func TestPostRoomMessageRefusesBadInput(t *testing.T) {
	s := startAdmin(t, func(c *config.Config) { c.Chat.MaxText = 10 })
	cases := []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"empty text", map[string]any{"text": ""}, http.StatusBadRequest, protocol.CodeInvalidText},
		{"blank text", map[string]any{"text": " \n\t "}, http.StatusBadRequest, protocol.CodeInvalidText},
		{"text over MaxText", map[string]any{"text": strings.Repeat("é", 11)}, http.StatusBadRequest, protocol.CodeInvalidText},
		{"missing text", map[string]any{"from": "bot"}, http.StatusBadRequest, protocol.CodeBadRequest},
		{"not JSON", "{text", http.StatusBadRequest, protocol.CodeBadRequest},
		{"from reserved in another case", map[string]any{"text": "hi", "from": "System"}, http.StatusBadRequest, protocol.CodeBadRequest},
		{"from with a control character", map[string]any{"text": "hi", "from": "b\x00t"}, http.StatusBadRequest, protocol.CodeBadRequest},
		{"from too long", map[string]any{"text": "hi", "from": strings.Repeat("x", 33)}, http.StatusBadRequest, protocol.CodeBadRequest},
		{"from with a zero-width space", map[string]any{"text": "hi", "from": "sys\u200btem"}, http.StatusBadRequest, protocol.CodeBadRequest},
		{"from with a bidi override", map[string]any{"text": "hi", "from": "\u202enimda"}, http.StatusBadRequest, protocol.CodeBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			call(t, s, http.MethodPost, "/api/rooms/lobby/messages", apiKey, tc.body).wantError(t, tc.status, tc.code)
		})
	}
	var got messagesResp
	call(t, s, http.MethodGet, "/api/rooms/lobby/messages", "", nil).ok(t, &got)
	if len(got.Messages) != 0 {
		t.Fatalf("a refused POST published %+v", got.Messages)
	}
}

func TestPostRoomMessageAcceptsTextOfExactlyMaxText(t *testing.T) {
	s := startAdmin(t, func(c *config.Config) { c.Chat.MaxText = 10 })
	var got postRoomResp
	call(t, s, http.MethodPost, "/api/rooms/lobby/messages", apiKey, map[string]any{"text": strings.Repeat("é", 10)}).ok(t, &got)
	if got.Seq != 1 {
		t.Fatalf("got %+v, want seq 1", got)
	}
}

type postUserResp struct {
	User        string `json:"user"`
	Connections int    `json:"connections"`
}

func TestPostUserMessageReachesEveryConnectionOfTheUser(t *testing.T) {
	s := startAdmin(t)
	bob1 := s.DialName(t, "bob")
	bob2 := s.DialName(t, "bob")
	alice := s.DialName(t, "alice")

	var got postUserResp
	call(t, s, http.MethodPost, "/api/users/bob/messages", apiKey, map[string]any{"text": "psst"}).ok(t, &got)
	if want := (postUserResp{User: "bob", Connections: 2}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i, bob := range []*chattest.Client{bob1, bob2} {
		e := bob.WaitFor("direct", nil)
		if e.Str("from") != "system" || e.Str("to") != "bob" || e.Str("text") != "psst" || e.Str("id") == "" || e.Int("ts") == 0 {
			t.Fatalf("bob connection %d: %s", i+1, e)
		}
	}
	alice.Quiet("direct", 200*time.Millisecond)
}

func TestPostUserMessageCarriesACustomFrom(t *testing.T) {
	s := startAdmin(t)
	bob := s.DialName(t, "bob")
	call(t, s, http.MethodPost, "/api/users/bob/messages", apiKey, map[string]any{"text": "hi", "from": "support"}).ok(t, nil)
	if e := bob.WaitFor("direct", nil); e.Str("from") != "support" || e.Str("text") != "hi" {
		t.Fatalf("direct %s, want from support", e)
	}
}

func TestPostUserMessageToAnOfflineUserIs404(t *testing.T) {
	s := startAdmin(t)
	s.DialName(t, "alice")
	call(t, s, http.MethodPost, "/api/users/nobody/messages", apiKey, map[string]any{"text": "hi"}).wantError(t, http.StatusNotFound, protocol.CodeUserOffline)
}

func TestPostUserMessageRefusesInvalidText(t *testing.T) {
	s := startAdmin(t)
	bob := s.DialName(t, "bob")
	call(t, s, http.MethodPost, "/api/users/bob/messages", apiKey, map[string]any{"text": "  "}).wantError(t, http.StatusBadRequest, protocol.CodeInvalidText)
	bob.Quiet("direct", 100*time.Millisecond)
}

type broadcastResp struct {
	Room string `json:"room"`
	TS   int64  `json:"ts"`
}

func TestBroadcastNoticeReachesEveryConnection(t *testing.T) {
	s := startAdmin(t)
	alice := s.DialName(t, "alice")
	bob1 := s.DialName(t, "bob")
	bob2 := s.DialName(t, "bob")
	alice.Join("lobby")

	var got broadcastResp
	call(t, s, http.MethodPost, "/api/broadcast", apiKey, map[string]any{"text": "maintenance at noon"}).ok(t, &got)
	if got.Room != "" || got.TS == 0 {
		t.Fatalf("got %+v, want no room and a ts", got)
	}
	for i, c := range []*chattest.Client{alice, bob1, bob2} {
		e := c.WaitFor("notice", nil)
		if e.Str("text") != "maintenance at noon" || e.Int("ts") != got.TS || e.Field("room") != nil {
			t.Fatalf("connection %d: notice %s", i, e)
		}
	}
}

func TestBroadcastToARoomReachesOnlyItsMembers(t *testing.T) {
	s := startAdmin(t)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	carol := s.DialName(t, "carol")
	alice.Join("lobby")
	bob.Join("lobby")
	carol.Join("elsewhere")

	var got broadcastResp
	call(t, s, http.MethodPost, "/api/broadcast", apiKey, map[string]any{"text": "lobby closes soon", "room": "lobby"}).ok(t, &got)
	if got.Room != "lobby" || got.TS == 0 {
		t.Fatalf("got %+v, want room lobby and a ts", got)
	}
	for _, c := range []*chattest.Client{alice, bob} {
		if e := c.WaitFor("notice", nil); e.Str("text") != "lobby closes soon" || e.Str("room") != "lobby" {
			t.Fatalf("notice %s", e)
		}
	}
	carol.Quiet("notice", 200*time.Millisecond)
}

func TestBroadcastRefusesInvalidText(t *testing.T) {
	s := startAdmin(t)
	alice := s.DialName(t, "alice")
	call(t, s, http.MethodPost, "/api/broadcast", apiKey, map[string]any{"text": ""}).wantError(t, http.StatusBadRequest, protocol.CodeInvalidText)
	alice.Quiet("notice", 100*time.Millisecond)
}

type kickResp struct {
	User   string `json:"user"`
	Closed int    `json:"closed"`
}

func TestKickClosesEveryConnectionOfTheUserWith4003(t *testing.T) {
	s := startAdmin(t)
	bob1 := s.DialName(t, "bob")
	bob2 := s.DialName(t, "bob")
	alice := s.DialName(t, "alice")
	alice.Join("lobby")
	bob1.Join("lobby")

	var got kickResp
	call(t, s, http.MethodDelete, "/api/users/bob/connections", apiKey, nil).ok(t, &got)
	if want := (kickResp{User: "bob", Closed: 2}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i, bob := range []*chattest.Client{bob1, bob2} {
		if code := bob.CloseCode(); code != protocol.CloseKicked {
			t.Fatalf("bob connection %d closed with %d, want %d", i+1, code, protocol.CloseKicked)
		}
	}
	alice.WaitFor("left", func(e chattest.Event) bool { return e.Str("user") == "bob" })
	alice.Say("lobby", "alice is still connected")
	eventually(t, "bob offline", func() bool {
		var u userResp
		call(t, s, http.MethodGet, "/api/users/bob", "", nil).ok(t, &u)
		return !u.Online
	})
}

func TestKickOfAnOfflineUserClosesNothing(t *testing.T) {
	s := startAdmin(t)
	var got kickResp
	call(t, s, http.MethodDelete, "/api/users/nobody/connections", apiKey, nil).ok(t, &got)
	if want := (kickResp{User: "nobody", Closed: 0}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

type statsResp struct {
	Node          string `json:"node"`
	Connections   int64  `json:"connections"`
	Rooms         int64  `json:"rooms"`
	UptimeSeconds int64  `json:"uptimeSeconds"`
	Received      int64  `json:"received"`
	Delivered     int64  `json:"delivered"`
	SlowConsumers int64  `json:"slowConsumers"`
}

func TestStatsReportsThisNodesCounters(t *testing.T) {
	s := startAdmin(t)
	var idle statsResp
	call(t, s, http.MethodGet, "/api/stats", apiKey, nil).ok(t, &idle)
	if idle.Node != s.Node.ID || idle.Connections != 0 || idle.Rooms != 0 || idle.Received != 0 || idle.SlowConsumers != 0 || idle.UptimeSeconds < 0 {
		t.Fatalf("idle stats %+v", idle)
	}

	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("lobby")
	bob.Join("lobby")
	bob.Join("games")
	alice.Say("lobby", "one")
	alice.Say("lobby", "two")
	bob.Message("lobby")
	bob.Message("lobby")

	var got statsResp
	call(t, s, http.MethodGet, "/api/stats", apiKey, nil).ok(t, &got)
	// Both members got both messages: at least 4 deliveries on top of the idle count.
	if got.Node != s.Node.ID || got.Connections != 2 || got.Rooms != 2 || got.Received != 2 ||
		got.Delivered < idle.Delivered+4 || got.SlowConsumers != 0 || got.UptimeSeconds < 0 || got.UptimeSeconds > 60 {
		t.Fatalf("stats %+v", got)
	}
}

func TestHealthzAnswers200(t *testing.T) {
	s := chattest.Start(t)
	var got struct{ Status string }
	call(t, s, http.MethodGet, "/healthz", "", nil).ok(t, &got)
	if got.Status == "" {
		t.Fatalf("no status")
	}
}

func TestReadyzAnswers200WhileServing(t *testing.T) {
	s := chattest.Start(t)
	var got struct{ Status string }
	call(t, s, http.MethodGet, "/readyz", "", nil).ok(t, &got)
	if got.Status == "" {
		t.Fatalf("no status")
	}
}

func TestBodyOverMaxBytesIs413(t *testing.T) {
	const maxBytes = 256
	s := startAdmin(t, func(c *config.Config) { c.MaxBytes = maxBytes })
	small := map[string]any{"text": strings.Repeat("a", 100)}
	call(t, s, http.MethodPost, "/api/rooms/lobby/messages", apiKey, small).ok(t, nil)

	big, err := json.Marshal(map[string]any{"text": strings.Repeat("a", 2*maxBytes)})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/rooms/lobby/messages", "/api/broadcast"} {
		t.Run(path, func(t *testing.T) {
			call(t, s, http.MethodPost, path, apiKey, big).wantError(t, http.StatusRequestEntityTooLarge, "")
		})
	}
	var got messagesResp
	call(t, s, http.MethodGet, "/api/rooms/lobby/messages", "", nil).ok(t, &got)
	if len(got.Messages) != 1 {
		t.Fatalf("history %+v, want only the small message", got.Messages)
	}
}

func TestErrorBodiesAreJSONWithCodeAndMessage(t *testing.T) {
	s := startAdmin(t)
	cases := []struct {
		name         string
		method, path string
		key          string
		body         any
		status       int
		code         string
	}{
		{"bad room", http.MethodGet, "/api/rooms/-x/members", "", nil, http.StatusBadRequest, protocol.CodeInvalidRoom},
		{"bad limit", http.MethodGet, "/api/rooms/lobby/messages?limit=1000", "", nil, http.StatusBadRequest, protocol.CodeBadRequest},
		{"bad user name", http.MethodGet, "/api/users/" + strings.Repeat("u", 33), "", nil, http.StatusBadRequest, protocol.CodeBadRequest},
		{"wrong key", http.MethodGet, "/api/stats", "nope", nil, http.StatusForbidden, protocol.CodeForbidden},
		{"offline user", http.MethodPost, "/api/users/nobody/messages", apiKey, map[string]any{"text": "hi"}, http.StatusNotFound, protocol.CodeUserOffline},
		{"invalid text", http.MethodPost, "/api/broadcast", apiKey, map[string]any{"text": ""}, http.StatusBadRequest, protocol.CodeInvalidText},
		{"malformed JSON", http.MethodPost, "/api/broadcast", apiKey, "not json", http.StatusBadRequest, protocol.CodeBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			call(t, s, tc.method, tc.path, tc.key, tc.body).wantError(t, tc.status, tc.code)
		})
	}
}

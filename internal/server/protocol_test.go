package server_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"
)

// fast lifts the rate limit for tests that send many commands.
func fast(c *config.Config) {
	c.Chat.RateLimit = 100000
	c.Chat.RateBurst = 100000
}

func TestJoinReturnsStateAndTellsMembers(t *testing.T) {
	s := chattest.Start(t, fast)
	alice := s.DialName(t, "alice")
	first := alice.Join("lobby")
	if first.Room != "lobby" || first.Epoch == "" || first.Seq != 0 || first.Recovered || len(first.History) != 0 {
		t.Fatalf("first join %+v", first)
	}
	for i := 1; i <= 60; i++ {
		alice.Say("lobby", fmt.Sprint("m", i))
	}
	bob := s.DialName(t, "bob")
	j := bob.Join("lobby")
	if j.Epoch != first.Epoch || j.Seq != 60 {
		t.Fatalf("join %+v", j)
	}
	if len(j.History) != 50 || j.History[0].Seq != 11 || j.History[49].Seq != 60 {
		t.Fatalf("history has %d messages from %d, want the latest 50", len(j.History), j.History[0].Seq)
	}
	want := []protocol.Member{{User: "alice", Connections: 1}, {User: "bob", Connections: 1}}
	if fmt.Sprint(j.Members) != fmt.Sprint(want) {
		t.Fatalf("members %+v", j.Members)
	}
	e := alice.WaitFor("joined", func(e chattest.Event) bool { return e.Str("user") == "bob" })
	if e.Str("room") != "lobby" || e.Str("client") != bob.Welcome.Str("client") {
		t.Fatalf("joined %s", e)
	}
}

func TestMembersGetEveryMessageOnceInSeqOrder(t *testing.T) {
	s := chattest.Start(t, fast)
	const senders, each = 4, 50
	reader := s.DialName(t, "reader")
	reader.Join("race")
	var clients []*chattest.Client
	for i := 0; i < senders; i++ {
		c := s.DialName(t, fmt.Sprint("sender", i))
		c.Join("race")
		clients = append(clients, c)
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func(c *chattest.Client) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				c.Send(map[string]any{"type": "send", "room": "race", "text": "x"})
			}
		}(c)
	}
	wg.Wait()
	for want := int64(1); want <= senders*each; want++ {
		if m := reader.Message("race"); m.Seq != want {
			t.Fatalf("got seq %d, want %d", m.Seq, want)
		}
	}
	reader.Quiet("message", 100e6)
}

func TestSendRepliesWithSeqAndKeepsTextAsSent(t *testing.T) {
	s := chattest.Start(t)
	c := s.DialName(t, "alice")
	c.Join("r1")
	var r struct {
		Room string `json:"room"`
		Seq  int64  `json:"seq"`
		TS   int64  `json:"ts"`
	}
	text := "  two\nlines <script>alert(1)</script> \"quoted\"  "
	c.OK("send", map[string]any{"room": "r1", "text": text}, &r)
	m := c.Message("r1")
	if r.Room != "r1" || r.Seq != 1 || r.TS == 0 || m.Seq != 1 || m.TS != r.TS || m.Text != text || m.From != "alice" || m.ID == "" || m.Type != "message" {
		t.Fatalf("reply %+v message %+v", r, m)
	}
}

func TestSendErrors(t *testing.T) {
	s := chattest.Start(t, fast)
	c := s.DialName(t, "alice")
	c.Join("here")
	long := strings.Repeat("é", 2001)
	for _, tc := range []struct {
		name   string
		fields map[string]any
		code   string
	}{
		{"not a member", map[string]any{"room": "elsewhere", "text": "hi"}, protocol.CodeNotMember},
		{"bad room", map[string]any{"room": "no spaces", "text": "hi"}, protocol.CodeInvalidRoom},
		{"room too long", map[string]any{"room": strings.Repeat("a", 65), "text": "hi"}, protocol.CodeInvalidRoom},
		{"empty text", map[string]any{"room": "here", "text": ""}, protocol.CodeInvalidText},
		{"blank text", map[string]any{"room": "here", "text": " \n\t "}, protocol.CodeInvalidText},
		{"missing text", map[string]any{"room": "here"}, protocol.CodeInvalidText},
		{"text over MaxText characters", map[string]any{"room": "here", "text": long}, protocol.CodeInvalidText},
		{"key too long", map[string]any{"room": "here", "text": "hi", "key": strings.Repeat("k", 65)}, protocol.CodeBadRequest},
		{"text of wrong type", map[string]any{"room": "here", "text": 5}, protocol.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) { c.Fail("send", tc.fields, tc.code) })
	}
	// MaxText counts characters, not bytes: 2000 two-byte characters pass.
	c.OK("send", map[string]any{"room": "here", "text": strings.Repeat("é", 2000)}, nil)
}

func TestIdempotentSendPublishesOnce(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("r")
	bob.Join("r")
	var first, again, other struct{ Seq, TS int64 }
	alice.OK("send", map[string]any{"room": "r", "text": "once", "key": "k-1"}, &first)
	alice.OK("send", map[string]any{"room": "r", "text": "once", "key": "k-1"}, &again)
	alice.OK("send", map[string]any{"room": "r", "text": "twice", "key": "k-2"}, &other)
	if again != first || other.Seq != first.Seq+1 {
		t.Fatalf("first %+v retry %+v other %+v", first, again, other)
	}
	if m := bob.Message("r"); m.Text != "once" || m.Seq != first.Seq {
		t.Fatalf("got %+v", m)
	}
	if m := bob.Message("r"); m.Text != "twice" {
		t.Fatalf("the retry was delivered: %+v", m)
	}
	// The same key from another user is another message.
	var bobs struct{ Seq int64 }
	bob.OK("send", map[string]any{"room": "r", "text": "mine", "key": "k-1"}, &bobs)
	if bobs.Seq != other.Seq+1 {
		t.Fatalf("bob's send got seq %d", bobs.Seq)
	}
}

func TestRecoveryReturnsExactlyTheMissedMessages(t *testing.T) {
	s := chattest.Start(t, fast)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("r")
	j := bob.Join("r")
	alice.Say("r", "1")
	alice.Say("r", "2")
	last := bob.Message("r")
	last = bob.Message("r")
	_ = bob.WS.Close()
	for i := 3; i <= 6; i++ {
		alice.Say("r", fmt.Sprint(i))
	}
	back := s.DialName(t, "bob")
	var r chattest.JoinResult
	back.OK("join", map[string]any{"room": "r", "since": map[string]any{"epoch": j.Epoch, "seq": last.Seq}}, &r)
	if !r.Recovered || len(r.History) != 4 || r.History[0].Seq != 3 || r.History[3].Seq != 6 || r.Seq != 6 {
		t.Fatalf("recovery %+v", r)
	}
	// Nothing of the recovered range is delivered again; the next one is.
	alice.Say("r", "7")
	if m := back.Message("r"); m.Seq != 7 {
		t.Fatalf("after recovery got %+v", m)
	}
}

func TestRecoveryMissStartsAfresh(t *testing.T) {
	s := chattest.Start(t, fast, func(c *config.Config) { c.Chat.HistorySize = 5 })
	alice := s.DialName(t, "alice")
	j := alice.Join("r")
	for i := 1; i <= 10; i++ {
		alice.Say("r", fmt.Sprint(i))
	}
	for _, tc := range []struct {
		name  string
		since map[string]any
	}{
		{"seq no longer in history", map[string]any{"epoch": j.Epoch, "seq": 2}},
		{"other epoch", map[string]any{"epoch": "not-the-epoch", "seq": 9}},
		{"seq ahead of the room", map[string]any{"epoch": j.Epoch, "seq": 99}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := s.DialName(t, "bob")
			var r chattest.JoinResult
			c.OK("join", map[string]any{"room": "r", "since": tc.since}, &r)
			if r.Recovered || len(r.History) != 5 || r.History[0].Seq != 6 || r.History[4].Seq != 10 {
				t.Fatalf("got %+v", r)
			}
		})
	}
	t.Run("nothing missed", func(t *testing.T) {
		c := s.DialName(t, "carol")
		var r chattest.JoinResult
		c.OK("join", map[string]any{"room": "r", "since": map[string]any{"epoch": j.Epoch, "seq": 10}}, &r)
		if !r.Recovered || len(r.History) != 0 {
			t.Fatalf("got %+v", r)
		}
	})
}

func TestLeave(t *testing.T) {
	s := chattest.Start(t, fast)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("r")
	bob.Join("r")
	var res struct{ Room string }
	bob.OK("leave", map[string]any{"room": "r"}, &res)
	if res.Room != "r" {
		t.Fatalf("leave result %+v", res)
	}
	e := alice.WaitFor("left", func(e chattest.Event) bool { return e.Str("user") == "bob" })
	if e.Str("client") != bob.Welcome.Str("client") || e.Str("room") != "r" {
		t.Fatalf("left %s", e)
	}
	alice.Say("r", "after")
	bob.Quiet("message", 200e6)
	bob.Fail("leave", map[string]any{"room": "r"}, protocol.CodeNotMember)
	bob.Fail("send", map[string]any{"room": "r", "text": "x"}, protocol.CodeNotMember)
}

func TestDisconnectLeavesEveryRoom(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("a")
	alice.Join("b")
	bob.Join("a")
	bob.Join("b")
	_ = bob.WS.Close()
	for _, room := range []string{"a", "b"} {
		alice.WaitFor("left", func(e chattest.Event) bool { return e.Str("room") == room && e.Str("user") == "bob" })
	}
	var m struct{ Members []protocol.Member }
	alice.OK("members", map[string]any{"room": "a"}, &m)
	if len(m.Members) != 1 || m.Members[0].User != "alice" {
		t.Fatalf("members %+v", m.Members)
	}
}

func TestDirectReachesEveryConnectionOfTheUser(t *testing.T) {
	s := chattest.Start(t)
	alice1 := s.DialName(t, "alice")
	alice2 := s.DialName(t, "alice")
	bob1 := s.DialName(t, "bob")
	bob2 := s.DialName(t, "bob")
	var r struct {
		To string `json:"to"`
		TS int64  `json:"ts"`
	}
	alice1.OK("direct", map[string]any{"to": "bob", "text": "psst"}, &r)
	if r.To != "bob" || r.TS == 0 {
		t.Fatalf("result %+v", r)
	}
	for _, c := range []*chattest.Client{bob1, bob2, alice2} {
		e := c.WaitFor("direct", nil)
		if e.Str("from") != "alice" || e.Str("to") != "bob" || e.Str("text") != "psst" || e.Int("ts") != r.TS || e.Str("id") == "" {
			t.Fatalf("direct %s", e)
		}
	}
	alice1.Quiet("direct", 200e6) // the sender's own connection has the reply
	alice1.Fail("direct", map[string]any{"to": "nobody", "text": "hi"}, protocol.CodeUserOffline)
	alice1.Fail("direct", map[string]any{"to": "bob", "text": ""}, protocol.CodeInvalidText)
	alice1.Fail("direct", map[string]any{"to": "", "text": "hi"}, protocol.CodeBadRequest)
}

func TestTypingReachesOtherMembers(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	alice.Join("r")
	bob.Join("r")
	alice.OK("typing", map[string]any{"room": "r"}, nil)
	e := bob.WaitFor("typing", nil)
	if e.Str("room") != "r" || e.Str("user") != "alice" {
		t.Fatalf("typing %s", e)
	}
	alice.Quiet("typing", 200e6)
	alice.Fail("typing", map[string]any{"room": "other"}, protocol.CodeNotMember)
}

func TestHistoryCommand(t *testing.T) {
	s := chattest.Start(t, fast)
	c := s.DialName(t, "alice")
	c.Join("r")
	for i := 1; i <= 120; i++ {
		c.Say("r", fmt.Sprint(i))
	}
	var h struct {
		Room     string             `json:"room"`
		Messages []protocol.Message `json:"messages"`
	}
	c.OK("history", map[string]any{"room": "r"}, &h)
	if h.Room != "r" || len(h.Messages) != 50 || h.Messages[0].Seq != 71 || h.Messages[49].Seq != 120 {
		t.Fatalf("default page: %d messages", len(h.Messages))
	}
	c.OK("history", map[string]any{"room": "r", "limit": 0}, &h) // 0 is the default page (SPEC §11)
	if len(h.Messages) != 50 || h.Messages[0].Seq != 71 || h.Messages[49].Seq != 120 {
		t.Fatalf("limit 0: %d messages", len(h.Messages))
	}
	c.OK("history", map[string]any{"room": "r", "before": 71, "limit": 100}, &h)
	if len(h.Messages) != 70 || h.Messages[0].Seq != 1 || h.Messages[69].Seq != 70 {
		t.Fatalf("before page: %d messages", len(h.Messages))
	}
	c.Fail("history", map[string]any{"room": "r", "limit": 101}, protocol.CodeBadRequest)
	c.Fail("history", map[string]any{"room": "r", "limit": -1}, protocol.CodeBadRequest)
	c.Fail("history", map[string]any{"room": "bad room"}, protocol.CodeInvalidRoom)
}

func TestMembersAndRooms(t *testing.T) {
	s := chattest.Start(t)
	a1 := s.DialName(t, "alice")
	a2 := s.DialName(t, "alice")
	b := s.DialName(t, "bob")
	a1.Join("x")
	a2.Join("x")
	b.Join("x")
	b.Join("y")
	var m struct {
		Room    string            `json:"room"`
		Members []protocol.Member `json:"members"`
	}
	b.OK("members", map[string]any{"room": "x"}, &m)
	want := []protocol.Member{{User: "alice", Connections: 2}, {User: "bob", Connections: 1}}
	if m.Room != "x" || fmt.Sprint(m.Members) != fmt.Sprint(want) {
		t.Fatalf("members %+v", m)
	}
	var r struct {
		Rooms []struct {
			Room    string `json:"room"`
			Members int    `json:"members"`
		} `json:"rooms"`
	}
	b.OK("rooms", nil, &r)
	if fmt.Sprint(r.Rooms) != "[{x 2} {y 1}]" {
		t.Fatalf("rooms %+v", r.Rooms)
	}
}

func TestCommandFraming(t *testing.T) {
	s := chattest.Start(t)
	c := s.DialName(t, "alice")
	t.Run("several commands in one frame are answered in order", func(t *testing.T) {
		c.Write(`{"type":"join","id":"a","room":"r"}` + "\n" + `{"type":"members","id":"b","room":"r"}` + "\n\n" + `{"type":"rooms","id":3}`)
		for _, id := range []any{"a", "b", float64(3)} {
			e := c.WaitFor("reply", nil)
			if e.Field("id") != id || e.Field("error") != nil {
				t.Fatalf("got %s, want reply %v", e, id)
			}
		}
	})
	t.Run("a failed command without id gets an error event", func(t *testing.T) {
		c.Write(`{"type":"send","room":"nowhere","text":"x"}`)
		e := c.WaitFor("error", nil)
		if e.Str("code") != protocol.CodeNotMember || e.Str("message") == "" {
			t.Fatalf("got %s", e)
		}
	})
	t.Run("a successful command without id gets nothing", func(t *testing.T) {
		c.Write(`{"type":"typing","room":"r"}`)
		c.Quiet("reply", 100e6)
		c.Quiet("error", 1)
	})
	for _, tc := range []struct{ name, frame, code string }{
		{"invalid JSON", `{"type":`, protocol.CodeBadRequest},
		{"not an object", `[1,2]`, protocol.CodeBadRequest},
		{"unknown type", `{"type":"dance"}`, protocol.CodeUnknownType},
		{"missing type", `{"room":"r"}`, protocol.CodeBadRequest},
		{"id of a wrong kind", `{"type":"rooms","id":{"x":1}}`, protocol.CodeBadRequest},
	} {
		t.Run(tc.name+" keeps the connection open", func(t *testing.T) {
			c.Write(tc.frame)
			e := c.WaitFor("error", nil)
			if e.Str("code") != tc.code {
				t.Fatalf("got %s, want %s", e, tc.code)
			}
			c.OK("rooms", nil, nil)
		})
	}
	t.Run("an unknown type with an id gets an error reply", func(t *testing.T) {
		c.Fail("dance", nil, protocol.CodeUnknownType)
	})
}

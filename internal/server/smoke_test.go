package server_test

import (
	"testing"

	"chat/internal/chattest"
)

func TestTwoClientsChatInARoom(t *testing.T) {
	s := chattest.Start(t)
	alice := s.DialName(t, "alice")
	bob := s.DialName(t, "bob")
	if alice.Welcome.Str("user") != "alice" || alice.Welcome.Str("node") != s.Node.ID {
		t.Fatalf("welcome %s", alice.Welcome)
	}
	alice.Join("lobby")
	j := bob.Join("lobby")
	if len(j.Members) != 2 {
		t.Fatalf("members %+v", j.Members)
	}
	alice.WaitFor("joined", func(e chattest.Event) bool { return e.Str("user") == "bob" })
	seq := alice.Say("lobby", "hello\nworld <b>")
	m := bob.Message("lobby")
	if m.Seq != seq || m.Text != "hello\nworld <b>" || m.From != "alice" {
		t.Fatalf("got %+v, seq %d", m, seq)
	}
}

package chattest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
)

// fatalRecorder is a testing.TB whose Fatalf records the failure and ends
// the calling goroutine, as the real one does, without failing the test.
type fatalRecorder struct {
	testing.TB
	failure chan string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.failure <- fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Helper() {}

// A wait on a connection that the server closed fails at once with the
// close code, not after Timeout with an empty backlog.
func TestWaitOnAClosedConnectionReportsTheCloseCode(t *testing.T) {
	s := chattest.Start(t)
	for _, wait := range []struct {
		name string
		do   func(c *chattest.Client)
	}{
		{"WaitFor", func(c *chattest.Client) { c.WaitFor("message", nil) }},
		{"Next", func(c *chattest.Client) { c.Next() }},
		{"WaitForWithin", func(c *chattest.Client) { c.WaitForWithin("message", nil, time.Hour) }},
		{"ReplyWithin", func(c *chattest.Client) { c.ReplyWithin(1, time.Hour) }},
	} {
		t.Run(wait.name, func(t *testing.T) {
			r := &fatalRecorder{TB: t, failure: make(chan string, 1)}
			name := "kicked-" + strings.ToLower(wait.name)
			c := s.Dial(r, "name="+name)
			if _, err := s.Node.Kick(context.Background(), name); err != nil {
				t.Fatal(err)
			}
			<-c.Done()
			go wait.do(c)
			if msg := <-r.failure; !strings.Contains(msg, "closed the connection with 4003") {
				t.Fatalf("the wait failed with %q, want the close code 4003", msg)
			}
		})
	}
}

// A wait bounded by the caller fails after that bound, not after Timeout.
func TestWaitForWithinFailsAfterItsOwnBound(t *testing.T) {
	s := chattest.Start(t)
	r := &fatalRecorder{TB: t, failure: make(chan string, 1)}
	c := s.DialName(r, "idle")
	const d = 200 * time.Millisecond
	start := time.Now()
	go c.WaitForWithin("message", nil, d)
	msg := <-r.failure
	if took := time.Since(start); took < d || took >= chattest.Timeout {
		t.Fatalf("the wait failed after %v, want %v", took, d)
	}
	if !strings.Contains(msg, "within "+d.String()) {
		t.Fatalf("the wait failed with %q, want its bound %v", msg, d)
	}
}

// Commands started together are answered by id, in whatever order the test
// asks for the replies, and Do goes on with fresh ids after them.
func TestStartedCommandsAreAnsweredByID(t *testing.T) {
	s := chattest.Start(t)
	c := s.DialName(t, "starter")
	a := c.Start("join", map[string]any{"room": "a"})
	b := c.Start("join", map[string]any{"room": "b"})
	if a == b {
		t.Fatalf("two commands started with the same id %d", a)
	}
	for _, want := range []struct {
		id   int
		room string
	}{{b, "b"}, {a, "a"}} {
		var j chattest.JoinResult
		c.ReplyWithin(want.id, chattest.Timeout).Decode(t, &j)
		if j.Room != want.room {
			t.Fatalf("reply %d is the join of %q, want %q", want.id, j.Room, want.room)
		}
	}
	if j := c.Join("c"); j.Room != "c" {
		t.Fatalf("join after the started commands: room %q, want c", j.Room)
	}
}

package chattest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

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

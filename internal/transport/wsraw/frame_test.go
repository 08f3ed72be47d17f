package wsraw

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// pair is an upgraded server-side Socket and a gorilla client on the other
// end of a real loopback connection.
func pair(t testing.TB) (*Socket, *websocket.Conn) {
	t.Helper()
	sockets := make(chan *Socket, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sock, err := Upgrade(&websocket.Upgrader{}, w, r)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := sock.Conn.Write(sock.Handshake); err != nil { // held back by Upgrade
			t.Error(err)
		}
		sockets <- sock
	}))
	t.Cleanup(srv.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	sock := <-sockets
	t.Cleanup(func() { _ = sock.WS.Close() })
	if sock.Raw == nil || sock.TCP == nil {
		t.Fatal("no raw socket under a plain TCP connection")
	}
	return sock, client
}

// Frames as a flusher assembles them are what a WebSocket client reads:
// every length encoding (7-bit, 16-bit, 64-bit), events batched up to
// MaxFrameOut and split beyond it, a larger event alone, controls first.
func TestAppendFramesIsReadAsWebSocketFrames(t *testing.T) {
	c, client := pair(t)
	event := func(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n) }
	small := make([][]byte, 0, 600)
	for range cap(small) {
		small = append(small, event(199, 's')) // 600 × 200 bytes: two frames
	}
	batches := []struct {
		events [][]byte
		want   []int // payload length of each frame
	}{
		{[][]byte{event(1, 'a')}, []int{1}},
		{[][]byte{event(125, 'b')}, []int{125}},
		{[][]byte{event(126, 'c')}, []int{126}},
		{[][]byte{event(62, 'd'), event(63, 'e')}, []int{126}}, // joined by '\n'
		{[][]byte{event(65535, 'f')}, []int{65535}},
		{[][]byte{event(70000, 'g')}, []int{70000}},
		{[][]byte{event(10, 'h'), event(70000, 'i'), event(10, 'j')}, []int{10, 70000, 10}},
		{small, []int{327*200 - 1, 273*200 - 1}},
	}
	pings := make(chan string, 1)
	client.SetPingHandler(func(data string) error { pings <- data; return nil })
	var out []byte
	out = AppendFrames(out, [][]byte{PingFrame}, nil)
	for _, b := range batches {
		out = AppendFrames(out, nil, b.events)
	}
	go func() {
		n, err := NewRawWriter().WriteNow(c, out)
		if err == nil && n < len(out) {
			_, err = c.Conn.Write(out[n:])
		}
		if err != nil {
			t.Error(err)
		}
	}()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, b := range batches {
		var want []byte
		rest := b.events
		for _, size := range b.want {
			want = want[:0]
			for len(want) < size {
				if len(want) > 0 {
					want = append(want, '\n')
				}
				want = append(want, rest[0]...)
				rest = rest[1:]
			}
			kind, got, err := client.ReadMessage()
			if err != nil {
				t.Fatalf("batch %d: %v", i, err)
			}
			if kind != websocket.TextMessage || !bytes.Equal(got, want) {
				t.Fatalf("batch %d: frame of %d bytes (kind %d), want %d bytes", i, len(got), kind, len(want))
			}
		}
		if i == 0 {
			select {
			case <-pings:
			default:
				t.Fatal("the control frame did not come first")
			}
		}
	}
}

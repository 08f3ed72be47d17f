package wsraw

import (
	"io"
	"strings"
	"testing"
)

// BenchmarkWriteBatch writes a batch of 20 message events (about 150 bytes
// each, as under fan-out load) to a real WebSocket on loopback, with a
// reader draining the other end.
func BenchmarkWriteBatch(b *testing.B) {
	c, client := pair(b)
	go func() {
		for {
			_, r, err := client.NextReader()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r)
		}
	}()
	event := []byte(`{"type":"message","room":"bench","epoch":"0123456789abcdef","seq":123456,"id":"0123456789ab-1e240","from":"sender","text":"` +
		strings.Repeat("x", 40) + `","ts":1795450568881}`)
	batch := make([][]byte, 20)
	for i := range batch {
		batch[i] = event
	}
	b.SetBytes(int64(len(batch) * (len(event) + 1)))
	b.ReportAllocs()
	var buf []byte
	w := NewRawWriter()
	for b.Loop() { // as a flusher writes: frames assembled, one non-blocking write, the rest blocking
		buf = AppendFrames(buf[:0], nil, batch)
		n, err := w.WriteNow(c, buf)
		if err == nil && n < len(buf) {
			_, err = c.Conn.Write(buf[n:])
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

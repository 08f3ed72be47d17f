package chat

import (
	"context"
	"runtime/pprof"
)

// The goroutines of sessions carry a pprof label (GoroutineLabel), which a
// goroutine profile shows beside each stack: a WebSocket's reader waiting
// for a frame (LabelWaiting) or running commands (LabelReading), a
// goroutine writing to one WebSocket (LabelWriting), a WebSocket flusher
// (LabelFlusher), an SSE stream (LabelStream), a session running
// commands posted over HTTP (LabelCommands), or the node's store writer,
// sweeper and retention (LabelStore). Operators see what sessions
// are doing; tests count them without depending on function names.
const (
	GoroutineLabel = "chat"
	LabelWaiting   = "reader-waiting"
	LabelReading   = "reader-reading"
	LabelWriting   = "writer"
	LabelFlusher   = "flusher"
	LabelStream    = "sse-stream"
	LabelCommands  = "commands"
	LabelStore     = "store"
)

// Labels makes a context whose labels pprof.SetGoroutineLabels sets on a
// goroutine, which costs no allocation; make it once.
func Labels(value string) context.Context {
	return pprof.WithLabels(context.Background(), pprof.Labels(GoroutineLabel, value))
}

var (
	labelsCommands = Labels(LabelCommands)
	labelsStore    = Labels(LabelStore)
)

package protocol

import (
	"bytes"
	"encoding/json"
	"iter"
	"strconv"
)

// Command is any client command (SPEC §3); each type reads the fields it
// needs.
type Command struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id,omitempty"` // nil: none; else a JSON string or number
	Room   string          `json:"room"`
	Text   string          `json:"text"`
	Key    string          `json:"key"`
	To     string          `json:"to"`
	Since  *Position       `json:"since"`
	Before int64           `json:"before"`
	Limit  int             `json:"limit"` // 0 (or absent): the default page
	After  string          `json:"after"` // members: the page after this user
}

// Position is a point in a room's sequence: the last message a client saw.
type Position struct {
	Epoch string `json:"epoch"`
	Seq   int64  `json:"seq"`
}

// DecodeCommand parses one command line. On failure it still returns the
// command's id when that much is readable and valid, so that the error can
// answer it; the error is always bad_request.
func DecodeCommand(line []byte) (Command, *Error) {
	var cmd Command
	if err := json.Unmarshal(line, &cmd); err != nil {
		// A field of the wrong type still leaves the id readable: answer it.
		var head struct {
			ID json.RawMessage `json:"id"`
		}
		if json.Unmarshal(line, &head) != nil || !validID(head.ID) {
			head.ID = nil
		}
		return Command{ID: head.ID}, Errorf(CodeBadRequest, "invalid command: %v", err)
	}
	if !validID(cmd.ID) {
		return Command{}, Errorf(CodeBadRequest, "id must be a string or a number")
	}
	return cmd, nil
}

// validID: no id, or a JSON string or number (null, objects, arrays and
// booleans are not ids). A number must be one a client can read back: one
// beyond float64's range (1e700) would be Infinity to JavaScript, and an
// answer no client could match.
func validID(id json.RawMessage) bool {
	if len(id) == 0 {
		return true
	}
	switch id[0] {
	case '"':
		return true
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		_, err := strconv.ParseFloat(string(id), 64)
		return err == nil
	}
	return false
}

// Lines splits a frame's payload into its commands: the newline-separated
// lines, trimmed of surrounding white space, without the empty ones. A
// WebSocket frame and an SSE command body are split alike.
func Lines(payload []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for len(payload) > 0 {
			line := payload
			if i := bytes.IndexByte(payload, '\n'); i >= 0 {
				line, payload = payload[:i], payload[i+1:]
			} else {
				payload = nil
			}
			if line = bytes.TrimSpace(line); len(line) > 0 && !yield(line) {
				return
			}
		}
	}
}

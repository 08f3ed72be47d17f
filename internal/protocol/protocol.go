// Package protocol holds the wire format shared by the WebSocket connections,
// the Hub and the REST API: events, error codes and the validation rules of
// SPEC §2-§4. It does no I/O.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Stable error codes (SPEC §4). Clients match on these strings.
const (
	CodeBadRequest   = "bad_request"
	CodeUnknownType  = "unknown_type"
	CodeInvalidRoom  = "invalid_room"
	CodeInvalidText  = "invalid_text"
	CodeNotMember    = "not_member"
	CodeTooManyRooms = "too_many_rooms"
	CodeUserOffline  = "user_offline"
	CodeRateLimited  = "rate_limited"
	CodeUnavailable  = "unavailable"
	CodeUnauthorized = "unauthorized"
	CodeInternal     = "internal"
)

// Codes the REST API adds for its own refusals (SPEC §7).
const (
	CodeAPIDisabled = "api_disabled"
	CodeForbidden   = "forbidden"
	// CodeSessionClosed: commands were posted to a session that has ended (SPEC §12).
	CodeSessionClosed = "session_closed"
	// CodeTooLarge: a body of commands over Chat.MaxFrameBytes, the HTTP
	// transport's counterpart of the WebSocket close 1009 (answered 413).
	CodeTooLarge = "too_large"
	// CodeClientOffline: the admin API named a connection that is not open (SPEC §13).
	CodeClientOffline = "client_offline"
)

// WebSocket close codes beyond RFC 6455's (SPEC §4).
const (
	CloseTokenExpired = 4001 // the connection's token expired (SPEC §13)
	CloseKicked       = 4003 // closed through the REST API
	CloseSlowConsumer = 4008 // queued events exceeded Chat.MaxQueueBytes
)

// SystemUser is the reserved name of messages the server itself sends.
const SystemUser = "system"

// MaxNameChars and MaxKeyChars bound user names and idempotency keys, in code points.
const (
	MaxNameChars = 32
	MaxKeyChars  = 64
)

// Error is a failure that reaches a client as one of the stable codes.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// AsError maps any error to a protocol Error; errors that are not already
// one become "internal" so that no internal detail leaks to clients.
func AsError(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return &Error{Code: CodeInternal, Message: "internal error"}
}

var roomPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidRoom reports whether name is a legal room name.
func ValidRoom(name string) bool { return roomPattern.MatchString(name) }

// CheckRoom returns an invalid_room error for a bad room name.
func CheckRoom(name string) error {
	if !ValidRoom(name) {
		return Errorf(CodeInvalidRoom, "room name must match %s", roomPattern.String())
	}
	return nil
}

// NormalizeName trims a display name and checks it: 1..32 code points, no
// control characters, no format characters (Unicode category Cf: zero-width
// spaces and joiners, bidi overrides, which let one name pass for another),
// not the reserved "system".
func NormalizeName(name string) (string, error) {
	name = strings.TrimSpace(name)
	n := utf8.RuneCountInString(name)
	switch {
	case !utf8.ValidString(name):
		return "", Errorf(CodeBadRequest, "name is not valid UTF-8")
	case n == 0 || n > MaxNameChars:
		return "", Errorf(CodeBadRequest, "name must be 1 to %d characters", MaxNameChars)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return "", Errorf(CodeBadRequest, "name must not contain control characters")
	case strings.IndexFunc(name, isFormat) >= 0:
		return "", Errorf(CodeBadRequest, "name must not contain invisible format characters (zero-width, bidi)")
	case strings.EqualFold(name, SystemUser):
		return "", Errorf(CodeBadRequest, "name %q is reserved", SystemUser)
	}
	return name, nil
}

func isFormat(r rune) bool { return unicode.Is(unicode.Cf, r) }

// CheckText validates a message text against maxChars code points. The text
// is kept exactly as sent (newlines included); only the emptiness test trims.
func CheckText(text string, maxChars int) error {
	if strings.TrimSpace(text) == "" {
		return Errorf(CodeInvalidText, "text is empty")
	}
	if n := utf8.RuneCountInString(text); n > maxChars {
		return Errorf(CodeInvalidText, "text is %d characters, the limit is %d", n, maxChars)
	}
	return nil
}

// Message is a room message as stored in history and sent as a "message" event.
type Message struct {
	Type  string `json:"type"` // always "message"
	Room  string `json:"room"`
	Epoch string `json:"epoch"`
	Seq   int64  `json:"seq"`
	ID    string `json:"id"`
	From  string `json:"from"`
	Text  string `json:"text"`
	TS    int64  `json:"ts"`
}

// Member is one user's presence in a room: how many connections it has there.
type Member struct {
	User        string `json:"user"`
	Connections int    `json:"connections"`
}

// Limits is what the welcome event tells a client about its limits.
type Limits struct {
	MaxText  int     `json:"maxText"`
	MaxRooms int     `json:"maxRooms"`
	Rate     float64 `json:"rate"`
}

// Welcome is the first event on every connection.
type Welcome struct {
	Type   string `json:"type"`
	Client string `json:"client"`
	User   string `json:"user"`
	Node   string `json:"node"`
	Limits Limits `json:"limits"`
	// An SSE session's address and secret for its commands (SPEC §12);
	// absent on a WebSocket, whose commands come on the socket.
	Session    string `json:"session,omitempty"`
	SessionKey string `json:"sessionKey,omitempty"`
}

// Close is an SSE stream's last event: how the session ended, with the
// code a WebSocket would have closed with (4008, 4003, 1001, ...).
type Close struct {
	Type   string `json:"type"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// Direct is a user-to-user message.
type Direct struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	From string `json:"from"`
	To   string `json:"to"`
	Text string `json:"text"`
	TS   int64  `json:"ts"`
	// Offline: the message waited in the store while the recipient had no
	// connection (SPEC §14).
	Offline bool `json:"offline,omitempty"`
}

// Presence is a "joined" or "left" event.
type Presence struct {
	Type   string `json:"type"`
	Room   string `json:"room"`
	User   string `json:"user"`
	Client string `json:"client"`
}

// PresenceDiff replaces joined/left in a room of more than
// Chat.PresenceEventLimit members (SPEC §15): at most one per
// Chat.PresenceInterval, with the exact count of users present and the
// users that joined or left since the last one (at most MaxPresenceNames
// each; the count covers the rest).
type PresenceDiff struct {
	Type   string   `json:"type"` // always "presence"
	Room   string   `json:"room"`
	Count  int      `json:"count"`
	Joined []string `json:"joined"`
	Left   []string `json:"left"`
}

// MaxPresenceNames caps each list of a PresenceDiff.
const MaxPresenceNames = 100

// Typing tells a room's members that a user is typing.
type Typing struct {
	Type string `json:"type"`
	Room string `json:"room"`
	User string `json:"user"`
}

// Notice is a server announcement.
type Notice struct {
	Type string `json:"type"`
	Text string `json:"text"`
	TS   int64  `json:"ts"`
	Room string `json:"room,omitempty"`
}

// Resync tells a member that the server could not fill a gap in a room.
type Resync struct {
	Type  string `json:"type"`
	Room  string `json:"room"`
	Epoch string `json:"epoch"`
	Seq   int64  `json:"seq"`
}

// ErrorEvent answers a failed command that carried no id.
type ErrorEvent struct {
	Type string `json:"type"`
	*Error
}

// Reply answers a command that carried an id: exactly one of Result and Err.
type Reply struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id"`
	Result any             `json:"result,omitempty"`
	Err    *Error          `json:"error,omitempty"`
}

// Encode marshals an event for the wire. Events are encoded once and the
// bytes shared by every recipient. HTML is not escaped: the page renders text
// as text, and escaping would only cost bytes.
func Encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'}), nil // the encoder ends with a newline
}

// MustEncode is Encode for values whose encoding cannot fail.
func MustEncode(v any) []byte {
	b, err := Encode(v)
	if err != nil {
		panic(fmt.Sprintf("protocol: encode %T: %v", v, err))
	}
	return b
}

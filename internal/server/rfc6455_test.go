package server_test

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"chat/internal/chattest"
	"chat/internal/config"

	"github.com/gorilla/websocket"
)

// Raw-frame tests of /ws against RFC 6455 (SPEC §11). The client is a plain
// TCP socket that upgrades by hand and writes frames byte by byte, so that
// it can send what no WebSocket library would. It never answers the
// server's close frame: the server must close the socket by itself.

// The first byte of a frame (§5.2): FIN, RSV1-3, the opcode.
const (
	rfcFin  = 0x80
	rfcRSV1 = 0x40
	rfcRSV2 = 0x20
	rfcRSV3 = 0x10

	rfcCont  = 0x0
	rfcText  = 0x1
	rfcClose = 0x8
	rfcPing  = 0x9
	rfcPong  = 0xA
)

const (
	// rfcMaxFrame is the test server's Chat.MaxFrameBytes: small, so that
	// the 1009 cases need little data.
	rfcMaxFrame = 1024
	// rfcWait bounds every wait for the server: generous, for a loaded
	// 2-core host (the server itself waits 2 s for a close's answer).
	rfcWait = 10 * time.Second
	// rfcNoCode stands for a close frame without a code (§7.1.5), rfcOpen
	// for no close frame yet (0 is no code a close frame may carry).
	rfcNoCode = websocket.CloseNoStatusReceived
	rfcOpen   = 0
)

// rfcMask is the client's masking key; any key will do (§5.3).
var rfcMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// rfcHeader is a frame's header for a payload of n bytes, in the shortest
// length encoding, with the mask key when masked.
func rfcHeader(first byte, masked bool, n uint64) []byte {
	h := []byte{first, 0}
	switch {
	case n < 126:
		h[1] = byte(n)
	case n <= math.MaxUint16:
		h[1] = 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] = 127
		h = binary.BigEndian.AppendUint64(h, n)
	}
	if masked {
		h[1] |= 0x80
		h = append(h, rfcMask[:]...)
	}
	return h
}

// rfcFrame is a client's frame: masked, as a client's must be (§5.1).
func rfcFrame(first byte, payload string) []byte {
	f := rfcHeader(first, true, uint64(len(payload)))
	for i := range len(payload) {
		f = append(f, payload[i]^rfcMask[i%4])
	}
	return f
}

// rfcUnmasked is a frame without the mask a client must apply.
func rfcUnmasked(first byte, payload string) []byte {
	return append(rfcHeader(first, false, uint64(len(payload))), payload...)
}

// rfcCloseFrame is a close frame with code and reason.
func rfcCloseFrame(code uint16, reason string) []byte {
	return rfcFrame(rfcFin|rfcClose, string(binary.BigEndian.AppendUint16(nil, code))+reason)
}

// rfcRooms is a command that the server answers with a reply to id.
func rfcRooms(id string) string { return `{"type":"rooms","id":"` + id + `"}` }

// rfcConn is the client's end of one connection; one goroutine uses it.
type rfcConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader // keeps what arrived after the 101 response
}

// rfcDial upgrades a plain TCP connection by hand and reads the welcome.
func rfcDial(t *testing.T, s *chattest.Server, name string) *rfcConn {
	t.Helper()
	host := strings.TrimPrefix(s.URL, "http://")
	conn, err := net.DialTimeout("tcp", host, rfcWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	key := base64.StdEncoding.EncodeToString(nonce)
	_ = conn.SetDeadline(time.Now().Add(rfcWait))
	req := "GET /ws?name=" + name + " HTTP/1.1\r\nHost: " + host + "\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	c := &rfcConn{t: t, conn: conn, br: bufio.NewReader(conn)}
	// The 101 and the welcome come in one write; the reader keeps the frame.
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("handshake: %s %v", resp.Status, resp.Header)
	}
	if first, payload, err := c.next(); err != nil || first != rfcFin|rfcText || !strings.Contains(string(payload), `"type":"welcome"`) {
		t.Fatalf("first frame %#x %q, %v; want the welcome", first, payload, err)
	}
	return c
}

func (c *rfcConn) write(frames ...[]byte) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(rfcWait))
	if _, err := c.conn.Write(slices.Concat(frames...)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next reads one server frame and returns its first byte and payload. A
// server's frame is never masked (§5.1) and has no reserved bits set.
func (c *rfcConn) next() (byte, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(rfcWait))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&(rfcRSV1|rfcRSV2|rfcRSV3) != 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("server frame %#x %#x: reserved bits or mask set", h[0], h[1])
	}
	n := uint64(h[1] & 0x7f)
	if n >= 126 {
		ext := make([]byte, map[uint64]int{126: 2, 127: 8}[n])
		if _, err := io.ReadFull(c.br, ext); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(append(make([]byte, 8-len(ext)), ext...))
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("server frame of %d bytes", n)
	}
	payload := make([]byte, n)
	_, err := io.ReadFull(c.br, payload)
	return h[0], payload, err
}

// rfcSeen is what the server sent before its close frame.
type rfcSeen struct {
	replies []string // ids of replies without error
	errors  []string // replies and events with an error
	pongs   []string
}

// untilClose reads the server's frames into seen up to its close frame
// and returns the close's code (rfcNoCode without one), or -1 and the
// error when the connection ended without a close frame. It returns
// rfcOpen as soon as enough (if not nil) reports that seen has all the
// client waits for.
func (c *rfcConn) untilClose(seen *rfcSeen, enough func() bool) (int, error) {
	for {
		if enough != nil && enough() {
			return rfcOpen, nil
		}
		first, payload, err := c.next()
		if err != nil {
			return -1, err
		}
		switch first {
		case rfcFin | rfcClose:
			switch {
			case len(payload) == 0:
				return rfcNoCode, nil
			case len(payload) == 1:
				return -1, errors.New("close frame with a 1-byte payload")
			}
			return int(binary.BigEndian.Uint16(payload)), nil
		case rfcFin | rfcPong:
			seen.pongs = append(seen.pongs, string(payload))
		case rfcFin | rfcText:
			for _, line := range strings.Split(string(payload), "\n") {
				var e struct {
					Type  string          `json:"type"`
					ID    any             `json:"id"`
					Error json.RawMessage `json:"error"`
				}
				_ = json.Unmarshal([]byte(line), &e)
				switch {
				case e.Error != nil || e.Type == "error":
					seen.errors = append(seen.errors, line)
				case e.Type == "reply":
					seen.replies = append(seen.replies, fmt.Sprint(e.ID))
				}
			}
		case rfcFin | rfcPing: // the heartbeat
		default:
			return -1, fmt.Errorf("unexpected server frame %#x %q", first, payload)
		}
	}
}

// closedByServer waits for the server to close the socket: end of stream
// or a reset, and nothing more after the close frame (§5.5.1).
func (c *rfcConn) closedByServer() error {
	_ = c.conn.SetReadDeadline(time.Now().Add(rfcWait))
	var b [512]byte
	n, err := c.br.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("%d bytes after the close frame: %q", n, b[:n])
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("socket still open %v after the close frame", rfcWait)
	}
	return nil // io.EOF, or a reset: closed
}

// rfcCase is one exchange: the frames the client writes at once after the
// welcome, what the server must answer, and the server's close. A case
// that expects answers is accepted: once they have come the client closes
// with 1000, which the server must echo. (The client waits for them
// first: the server drops what it has queued and not yet written when a
// close arrives, as RFC 6455 §5.5.1 allows.)
type rfcCase struct {
	name    string
	frames  [][]byte
	replies []string // ids of the commands answered, in order; none else
	pongs   []string // pong payloads, in order
	want    int      // the server's close code
}

// rfcBye ends an accepted exchange.
var rfcBye = rfcCloseFrame(websocket.CloseNormalClosure, "bye")

// rfcPad starts a command whose padding the UTF-8 cases fill.
const rfcPad = `{"type":"rooms","id":"utf8","pad":"`

func TestRFC6455ValidFramesAreAnsweredAndClosesEchoed(t *testing.T) {
	cases := []rfcCase{
		{name: "fragmented text message is answered", frames: [][]byte{
			rfcFrame(rfcText, `{"type":"ro`), rfcFrame(rfcCont, `oms","id":"fr`), rfcFrame(rfcFin|rfcCont, `ag"}`),
		}, replies: []string{"frag"}, want: 1000},
		{name: "character split across fragments is accepted", frames: [][]byte{ // U+1F600: F0 9F 98 80
			rfcFrame(rfcText, rfcPad+"\xf0"), rfcFrame(rfcCont, "\x9f\x98"), rfcFrame(rfcFin|rfcCont, "\x80\"}"),
		}, replies: []string{"utf8"}, want: 1000},
		{name: "ping between fragments is answered", frames: [][]byte{
			rfcFrame(rfcText, `{"type":"rooms",`), rfcFrame(rfcFin|rfcPing, "mid"), rfcFrame(rfcFin|rfcCont, `"id":"after"}`),
		}, replies: []string{"after"}, pongs: []string{"mid"}, want: 1000},
		{name: "ping payload is echoed in the pong", frames: [][]byte{
			rfcFrame(rfcFin|rfcPing, "hello rfc 6455"), rfcFrame(rfcFin|rfcPing, ""), rfcFrame(rfcFin|rfcPing, strings.Repeat("p", 125)),
		}, pongs: []string{"hello rfc 6455", "", strings.Repeat("p", 125)}, want: 1000},
		{name: "unsolicited pong is ignored", frames: [][]byte{
			rfcFrame(rfcFin|rfcPong, "unasked"), rfcFrame(rfcFin|rfcText, rfcRooms("pong")),
		}, replies: []string{"pong"}, want: 1000},
		{name: "close without a code is echoed without one", frames: [][]byte{rfcFrame(rfcFin|rfcClose, "")}, want: rfcNoCode},
		{name: "a reply queued before the peer's close is still sent", frames: [][]byte{
			rfcFrame(rfcFin|rfcText, rfcRooms("last")), rfcCloseFrame(1000, "bye"),
		}, replies: []string{"last"}, want: 1000},
	}
	for _, code := range []int{1000, 1001, 1011, 3000, 4999} {
		cases = append(cases, rfcCase{name: fmt.Sprintf("close %d is echoed", code), frames: [][]byte{rfcCloseFrame(uint16(code), "bye")}, want: code})
	}
	runRFC6455(t, cases)
}

func TestRFC6455ProtocolErrorsAreClosedWith1002(t *testing.T) {
	var cases []rfcCase
	add := func(name string, frames ...[]byte) {
		cases = append(cases, rfcCase{name: name, frames: frames, want: websocket.CloseProtocolError})
	}
	for _, op := range []byte{0x3, 0x7, 0xB, 0xF} {
		add(fmt.Sprintf("reserved opcode %#x", op), rfcFrame(rfcFin|op, "x"))
	}
	for _, rsv := range []struct {
		name  string
		first byte
	}{{"RSV1 on text", rfcFin | rfcRSV1 | rfcText}, {"RSV2 on text", rfcFin | rfcRSV2 | rfcText},
		{"RSV3 on text", rfcFin | rfcRSV3 | rfcText}, {"RSV1 on ping", rfcFin | rfcRSV1 | rfcPing},
		{"RSV2 on pong", rfcFin | rfcRSV2 | rfcPong}, {"RSV3 on close", rfcFin | rfcRSV3 | rfcClose}} {
		payload := rfcRooms("rsv")
		if rsv.first&0x0F >= rfcClose { // a control frame
			payload = "\x03\xe8"
		}
		add("reserved bit "+rsv.name, rfcFrame(rsv.first, payload))
	}
	add("unmasked text", rfcUnmasked(rfcFin|rfcText, rfcRooms("unmasked")))
	add("unmasked ping", rfcUnmasked(rfcFin|rfcPing, "x"))
	add("unmasked pong", rfcUnmasked(rfcFin|rfcPong, "x"))
	add("unmasked close", rfcUnmasked(rfcFin|rfcClose, "\x03\xe8"))
	add("fragmented ping", rfcFrame(rfcPing, "a"), rfcFrame(rfcFin|rfcCont, "b"))
	add("fragmented pong", rfcFrame(rfcPong, "a"), rfcFrame(rfcFin|rfcCont, "b"))
	add("fragmented close", rfcFrame(rfcClose, "\x03\xe8"), rfcFrame(rfcFin|rfcCont, "bye"))
	add("ping of 126 bytes", rfcFrame(rfcFin|rfcPing, strings.Repeat("p", 126)))
	add("pong of 126 bytes", rfcFrame(rfcFin|rfcPong, strings.Repeat("p", 126)))
	add("close of 126 bytes", rfcCloseFrame(1000, strings.Repeat("r", 124)))
	add("64-bit length with the top bit set", // §5.2: the most significant bit MUST be 0
		append(rfcHeader(rfcFin|rfcText, true, 1<<63|2), '{'^rfcMask[0], '}'^rfcMask[1]))
	add("continuation without a message", rfcFrame(rfcFin|rfcCont, rfcRooms("cont")))
	add("new message inside a fragmented one",
		rfcFrame(rfcText, `{"type":"rooms",`), rfcFrame(rfcFin|rfcText, rfcRooms("inner")))
	for _, code := range []int{0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535} {
		add(fmt.Sprintf("close code %d", code), rfcCloseFrame(uint16(code), ""))
	}
	add("close with a 1-byte payload", rfcFrame(rfcFin|rfcClose, "\x03")) // §5.5.1: a code is 2 bytes
	// RFC 6455 names no code for a close reason that is not UTF-8; gorilla
	// fails the connection with 1002, which Autobahn's case 7.5.1 accepts.
	add("invalid UTF-8 in a close reason", rfcCloseFrame(1000, "\xce\xba\xed\xa0\x80"))
	runRFC6455(t, cases)
}

func TestRFC6455InvalidUTF8IsClosedWith1007(t *testing.T) {
	var cases []rfcCase
	add := func(name string, frames ...[]byte) {
		cases = append(cases, rfcCase{name: name, frames: frames, want: websocket.CloseInvalidFramePayloadData})
	}
	add("invalid byte in one frame", rfcFrame(rfcFin|rfcText, rfcPad+"\xff\"}"))
	add("invalid sequence split across fragments", // C3 must be followed by a continuation byte
		rfcFrame(rfcText, rfcPad+"\xc3"), rfcFrame(rfcFin|rfcCont, "(\"}"))
	add("surrogate split across fragments", // ED A0 80 is U+D800
		rfcFrame(rfcText, rfcPad+"\xed"), rfcFrame(rfcCont, "\xa0"), rfcFrame(rfcFin|rfcCont, "\x80\"}"))
	add("invalid byte in the last fragment", rfcFrame(rfcText, rfcPad), rfcFrame(rfcFin|rfcCont, "\xff\"}"))
	add("message ends inside a character", rfcFrame(rfcText, rfcPad), rfcFrame(rfcFin|rfcCont, "\xf0\x9f"))
	runRFC6455(t, cases)
}

func TestRFC6455MessagesOverMaxFrameBytesAreClosedWith1009(t *testing.T) {
	var cases []rfcCase
	add := func(name string, frames ...[]byte) {
		cases = append(cases, rfcCase{name: name, frames: frames, want: websocket.CloseMessageTooBig})
	}
	add("16-bit length", rfcFrame(rfcFin|rfcText, rfcPad+strings.Repeat("x", rfcMaxFrame)+`"}`))
	add("64-bit length, header only", rfcHeader(rfcFin|rfcText, true, 1<<32))
	add("fragments each under it",
		rfcFrame(rfcText, rfcPad+strings.Repeat("x", rfcMaxFrame/2)), rfcFrame(rfcFin|rfcCont, strings.Repeat("x", rfcMaxFrame/2)+`"}`))
	runRFC6455(t, cases)
}

// runRFC6455 runs each case on a connection of its own to one server.
func runRFC6455(t *testing.T, cases []rfcCase) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxFrameBytes = rfcMaxFrame })
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := rfcDial(t, s, "rfc"+chattest.Itoa(i))
			c.write(tc.frames...)
			var seen rfcSeen
			code, err := c.untilClose(&seen, func() bool {
				return len(tc.replies)+len(tc.pongs) > 0 && len(seen.replies) >= len(tc.replies) && len(seen.pongs) >= len(tc.pongs)
			})
			if code == rfcOpen && err == nil {
				c.write(rfcBye)
				code, err = c.untilClose(&seen, nil)
			}
			if err != nil {
				t.Errorf("no close frame: %v (want close %d)", err, tc.want)
			} else if code != tc.want {
				t.Errorf("close code %d, want %d", code, tc.want)
			}
			if !slices.Equal(seen.replies, tc.replies) || len(seen.errors) > 0 {
				t.Errorf("replies %q, errors %q; want replies %q", seen.replies, seen.errors, tc.replies)
			}
			if !slices.Equal(seen.pongs, tc.pongs) {
				t.Errorf("pongs %q, want %q", seen.pongs, tc.pongs)
			}
			if err == nil {
				if err := c.closedByServer(); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

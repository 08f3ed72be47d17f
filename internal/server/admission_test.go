package server_test

import (
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"chat/internal/chattest"
	"chat/internal/config"
	"chat/internal/protocol"

	"github.com/golang-jwt/jwt/v4"
)

// wsURL is the server's /ws with query q.
func wsURL(s *chattest.Server, q url.Values) string {
	if len(q) == 0 {
		return s.WSURL
	}
	return s.WSURL + "?" + q.Encode()
}

// dialOK connects and fails the test if the upgrade is refused.
func dialOK(t *testing.T, rawURL string, header http.Header) *chattest.Client {
	t.Helper()
	c, resp, err := chattest.DialURL(t, rawURL, header)
	if err != nil {
		status := 0
		var body []byte
		if resp != nil {
			status = resp.StatusCode
			body, _ = io.ReadAll(resp.Body)
		}
		t.Fatalf("dial %s: %v (HTTP %d %s)", rawURL, err, status, body)
	}
	return c
}

// dialRefused asserts that the upgrade is refused with status and a JSON
// error body with code (any code when code is "").
func dialRefused(t *testing.T, rawURL string, header http.Header, status int, code string) protocol.Error {
	t.Helper()
	c, resp, err := chattest.DialURL(t, rawURL, header)
	if err == nil {
		t.Fatalf("dial %s: upgraded as %s, want HTTP %d", rawURL, c.Welcome, status)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v without an HTTP answer, want HTTP %d", rawURL, err, status)
	}
	body, _ := io.ReadAll(resp.Body)
	return apiResp{status: resp.StatusCode, header: resp.Header, body: body}.wantError(t, status, code)
}

var guestName = regexp.MustCompile(`^guest-[0-9a-f]{8}$`)

func TestWSWithoutANameGetsAGuestName(t *testing.T) {
	s := chattest.Start(t)
	seen := map[string]bool{}
	for _, tc := range []struct {
		name  string
		query url.Values
	}{
		{"no name parameter", nil},
		{"empty name", url.Values{"name": {""}}},
		{"blank name", url.Values{"name": {"  \t "}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialOK(t, wsURL(s, tc.query), nil)
			user := c.Welcome.Str("user")
			if !guestName.MatchString(user) {
				t.Fatalf("user %q, want guest-<8 hex>", user)
			}
			if seen[user] {
				t.Fatalf("guest name %s given twice", user)
			}
			seen[user] = true
		})
	}
}

func TestWSNameIsTrimmed(t *testing.T) {
	s := chattest.Start(t)
	for _, tc := range []struct{ raw, want string }{
		{"  alice  ", "alice"},
		{"\tbob\n", "bob"},
		{"\u00a0carol\u3000", "carol"}, // no-break and ideographic spaces
		{" dan the man ", "dan the man"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			c := dialOK(t, wsURL(s, url.Values{"name": {tc.raw}}), nil)
			if got := c.Welcome.Str("user"); got != tc.want {
				t.Fatalf("user %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWSAcceptsA32CodePointNonASCIIName(t *testing.T) {
	s := chattest.Start(t)
	name := strings.Repeat("ü", 15) + strings.Repeat("日", 15) + "🙂é"
	if n := utf8.RuneCountInString(name); n != protocol.MaxNameChars {
		t.Fatalf("test name has %d code points", n)
	}
	c := dialOK(t, wsURL(s, url.Values{"name": {name}}), nil)
	if got := c.Welcome.Str("user"); got != name {
		t.Fatalf("user %q, want %q", got, name)
	}
}

func TestWSRefusesABadNameBeforeTheUpgrade(t *testing.T) {
	s := chattest.Start(t)
	for _, tc := range []struct{ name, raw string }{
		{"33 code points", strings.Repeat("a", 33)},
		{"33 non-ASCII code points", strings.Repeat("ü", 33)},
		{"control character", "al\x01ice"},
		{"tab inside", "al\tice"},
		{"newline inside", "al\nice"},
		{"DEL", "bob\x7f"},
		{"C1 control", "bob\u0085x"},
		{"reserved system", "system"},
		{"reserved SYSTEM", "SYSTEM"},
		{"reserved System padded", "  System "},
		{"invalid UTF-8", "bob\xff"},
		{"zero-width space alone", "\u200b"},
		{"zero-width space inside", "al\u200bice"},
		{"zero-width joiner", "bob\u200d"},
		{"right-to-left override", "\u202egnp.exe"},
		{"left-to-right isolate", "\u2066bob"},
		{"byte order mark", "\ufeffbob"},
		{"soft hyphen", "al\u00adice"},
		{"tag character", "bob\U000E0041"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dialRefused(t, wsURL(s, url.Values{"name": {tc.raw}}), nil, http.StatusBadRequest, protocol.CodeBadRequest)
		})
	}
	if n := s.Node.Stats().Connections; n != 0 {
		t.Fatalf("%d connections registered, want none", n)
	}
}

func TestWSOriginCheck(t *testing.T) {
	const foreign = "https://app.example"
	for _, tc := range []struct {
		name    string
		allowed []string
		origin  func(s *chattest.Server) string // "" sends no Origin
		refused bool
	}{
		{"no Origin is accepted", nil, func(*chattest.Server) string { return "" }, false},
		{"same host is accepted", nil, func(s *chattest.Server) string { return s.URL }, false},
		{"foreign origin is refused", nil, func(*chattest.Server) string { return foreign }, true},
		{"same hostname on another port is refused", nil, func(*chattest.Server) string { return "http://127.0.0.1:1" }, true},
		{"null origin is refused", nil, func(*chattest.Server) string { return "null" }, true},
		{"listed foreign origin is accepted", []string{"https://other.example", foreign}, func(*chattest.Server) string { return foreign }, false},
		{"unlisted foreign origin is refused", []string{"https://other.example"}, func(*chattest.Server) string { return foreign }, true},
		{"star accepts any origin", []string{"*"}, func(*chattest.Server) string { return "https://anything.example" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := chattest.Start(t, func(c *config.Config) { c.Chat.AllowedOrigins = tc.allowed })
			header := http.Header{}
			if o := tc.origin(s); o != "" {
				header.Set("Origin", o)
			}
			u := wsURL(s, url.Values{"name": {"alice"}})
			if tc.refused {
				dialRefused(t, u, header, http.StatusForbidden, "")
				return
			}
			if c := dialOK(t, u, header); c.Welcome.Str("user") != "alice" {
				t.Fatalf("welcome %s", c.Welcome)
			}
		})
	}
}

func TestWSForeignOriginIsRefusedWithCodeForbidden(t *testing.T) {
	s := chattest.Start(t)
	dialRefused(t, s.WSURL, http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden, protocol.CodeForbidden)
}

const accessSecret = "test-access-secret"

// startAuth runs the service with token auth on.
func startAuth(t *testing.T) *chattest.Server {
	t.Helper()
	return chattest.Start(t, func(c *config.Config) { c.Auth.AccessSecret = accessSecret })
}

// mint signs claims with method and key.
func mint(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	token, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// hs256 is a valid token for claims, expiring in an hour unless claims say otherwise.
func hs256(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	if _, ok := claims["exp"]; !ok {
		claims["exp"] = time.Now().Add(time.Hour).Unix()
	}
	return mint(t, jwt.SigningMethodHS256, []byte(accessSecret), claims)
}

func TestWSTokenAuthRefusesABadTokenWith401(t *testing.T) {
	s := startAuth(t)
	hour := time.Hour
	valid := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"name": "alice", "exp": time.Now().Add(hour).Unix()}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}
	for _, tc := range []struct {
		name   string
		query  string // the token parameter
		bearer string // the Authorization header's token
	}{
		{"missing token", "", ""},
		{"not a JWT", "not.a.jwt", ""},
		{"wrong secret", mint(t, jwt.SigningMethodHS256, []byte("another-secret"), valid(nil)), ""},
		{"expired", hs256(t, valid(jwt.MapClaims{"exp": time.Now().Add(-time.Minute).Unix()})), ""},
		{"not yet valid", hs256(t, valid(jwt.MapClaims{"nbf": time.Now().Add(hour).Unix()})), ""},
		{"alg none", mint(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(nil)), ""},
		{"alg HS512 with the right secret", mint(t, jwt.SigningMethodHS512, []byte(accessSecret), valid(nil)), ""},
		{"no name or sub claim", hs256(t, jwt.MapClaims{"role": "admin"}), ""},
		{"reserved name claim", hs256(t, jwt.MapClaims{"name": "system"}), ""},
		{"name claim too long", hs256(t, jwt.MapClaims{"name": strings.Repeat("x", 33)}), ""},
		{"bearer with wrong secret", "", mint(t, jwt.SigningMethodHS256, []byte("another-secret"), valid(nil))},
		{"bearer alg none", "", mint(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(nil))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := url.Values{"name": {"alice"}}
			if tc.query != "" {
				q.Set("token", tc.query)
			}
			header := http.Header{}
			if tc.bearer != "" {
				header.Set("Authorization", "Bearer "+tc.bearer)
			}
			dialRefused(t, wsURL(s, q), header, http.StatusUnauthorized, protocol.CodeUnauthorized)
		})
	}
}

func TestWSTokenNameClaimIsTheUserAndTheNameParameterIsIgnored(t *testing.T) {
	s := startAuth(t)
	token := hs256(t, jwt.MapClaims{"name": "Alice Liddell", "sub": "u-1"})
	for _, name := range []string{"", "mallory", "system", strings.Repeat("x", 40)} {
		t.Run("name="+name, func(t *testing.T) {
			q := url.Values{"token": {token}}
			if name != "" {
				q.Set("name", name)
			}
			c := dialOK(t, wsURL(s, q), nil)
			if got := c.Welcome.Str("user"); got != "Alice Liddell" {
				t.Fatalf("user %q, want the token's name claim", got)
			}
		})
	}
}

func TestWSTokenSubIsTheUserWithoutANameClaim(t *testing.T) {
	s := startAuth(t)
	c := dialOK(t, wsURL(s, url.Values{"token": {hs256(t, jwt.MapClaims{"sub": "u-42"})}, "name": {"mallory"}}), nil)
	if got := c.Welcome.Str("user"); got != "u-42" {
		t.Fatalf("user %q, want the token's sub", got)
	}
}

func TestWSTokenInAuthorizationBearerIsAccepted(t *testing.T) {
	s := startAuth(t)
	header := http.Header{"Authorization": {"Bearer " + hs256(t, jwt.MapClaims{"name": "bob"})}}
	c := dialOK(t, wsURL(s, url.Values{"name": {"mallory"}}), header)
	if got := c.Welcome.Str("user"); got != "bob" {
		t.Fatalf("user %q, want bob", got)
	}
}

func TestWSMaxConnectionsRefusesBeyondTheCapWith503(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxConnections = 2 })
	s.DialName(t, "alice")
	s.DialName(t, "bob")
	dialRefused(t, wsURL(s, url.Values{"name": {"carol"}}), nil, http.StatusServiceUnavailable, protocol.CodeUnavailable)
}

func TestWSMaxConnectionsFreesASlotWhenAConnectionCloses(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxConnections = 2 })
	alice := s.DialName(t, "alice")
	s.DialName(t, "bob")
	dialRefused(t, wsURL(s, url.Values{"name": {"carol"}}), nil, http.StatusServiceUnavailable, protocol.CodeUnavailable)

	_ = alice.WS.Close()
	// The slot is freed once the closed connection's pumps have ended.
	var carol *chattest.Client
	eventually(t, "a slot after alice closed", func() bool {
		c, _, err := chattest.DialURL(t, wsURL(s, url.Values{"name": {"carol"}}), nil)
		carol = c
		return err == nil
	})
	if got := carol.Welcome.Str("user"); got != "carol" {
		t.Fatalf("welcome %s", carol.Welcome)
	}
	dialRefused(t, wsURL(s, url.Values{"name": {"dave"}}), nil, http.StatusServiceUnavailable, protocol.CodeUnavailable)
}

// One user may hold Chat.MaxUserConnections connections on a replica;
// the next is refused before the upgrade, others are not, and a closed
// connection gives its place back.
func TestWSMaxUserConnectionsRefusesTheUsersNextWith503(t *testing.T) {
	s := chattest.Start(t, func(c *config.Config) { c.Chat.MaxUserConnections = 3 })
	var alice []*chattest.Client
	for range 3 {
		alice = append(alice, s.DialName(t, "alice"))
	}
	e := dialRefused(t, wsURL(s, url.Values{"name": {"alice"}}), nil, http.StatusServiceUnavailable, protocol.CodeUnavailable)
	if e.Message != "too many connections for this user" {
		t.Fatalf("message %q", e.Message)
	}
	s.DialName(t, "bob") // another user is not affected
	_ = alice[1].WS.Close()
	eventually(t, "alice's place after one of hers closed", func() bool {
		_, _, err := chattest.DialURL(t, wsURL(s, url.Values{"name": {"alice"}}), nil)
		return err == nil
	})
	dialRefused(t, wsURL(s, url.Values{"name": {"alice"}}), nil, http.StatusServiceUnavailable, protocol.CodeUnavailable)
}

func TestWSWelcomeHasADistinctClientIDAndTheNodeID(t *testing.T) {
	s := chattest.Start(t)
	conns := []*chattest.Client{s.DialName(t, "alice"), s.DialName(t, "alice"), s.DialName(t, "bob")}
	seen := map[string]bool{}
	for i, c := range conns {
		w := c.Welcome
		client := w.Str("client")
		if client == "" || seen[client] {
			t.Fatalf("connection %d: client id %q is empty or repeated (welcome %s)", i, client, w)
		}
		seen[client] = true
		if w.Str("node") != s.Node.ID || s.Node.ID == "" {
			t.Fatalf("connection %d: node %q, want %q", i, w.Str("node"), s.Node.ID)
		}
		limits, _ := w.Field("limits").(map[string]any)
		cfg := s.Config.Chat
		if limits["maxText"] != float64(cfg.MaxText) || limits["maxRooms"] != float64(cfg.MaxRooms) || limits["rate"] != cfg.RateLimit {
			t.Fatalf("connection %d: limits %v, want maxText %d, maxRooms %d, rate %g", i, limits, cfg.MaxText, cfg.MaxRooms, cfg.RateLimit)
		}
	}
}

func TestWSTwoNodesInOneProcessHaveDistinctNodeIDs(t *testing.T) {
	a := chattest.Start(t)
	b := chattest.Start(t)
	na := a.DialName(t, "alice").Welcome.Str("node")
	nb := b.DialName(t, "alice").Welcome.Str("node")
	if na == "" || na == nb {
		t.Fatalf("node ids %q and %q, want distinct", na, nb)
	}
	// Client ids are unique across the cluster, so they differ across nodes too.
	ca := a.DialName(t, "bob").Welcome.Str("client")
	cb := b.DialName(t, "bob").Welcome.Str("client")
	if ca == cb {
		t.Fatalf("client id %s on both nodes", ca)
	}
}

// Package admission is what every transport checks before it opens a
// session, and how it refuses: the user a token established, the browser
// origin, the display name, and the JSON error body of a refusal. The
// middleware and both transports use it; it depends on nothing but the
// protocol's error shape.
package admission

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"

	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/rest/httpx"
)

type userKey struct{}

// WithUser records the user that token auth established for a request.
func WithUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// TokenUser is the user token auth established, if any.
func TokenUser(ctx context.Context) (string, bool) {
	user, ok := ctx.Value(userKey{}).(string)
	return user, ok
}

// WriteError answers a refused request with the JSON error body of the REST API.
func WriteError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	httpx.WriteJsonCtx(r.Context(), w, status, protocol.Error{Code: code, Message: message})
}

// User is the session's user: the token's when auth established one, else
// the normalized ?name=, else a guest name. A bad name is a protocol error
// (400 before the session opens).
func User(r *http.Request) (string, error) {
	if user, ok := TokenUser(r.Context()); ok {
		return user, nil
	}
	name := r.URL.Query().Get("name")
	if strings.TrimSpace(name) == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		return "guest-" + hex.EncodeToString(b[:]), nil
	}
	return protocol.NormalizeName(name)
}

// OriginAllowed: no Origin (not a browser), the page's own host, or one of
// allowed ("*": any).
func OriginAllowed(r *http.Request, allowed []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, a := range allowed {
		if a == "*" || strings.EqualFold(strings.TrimSuffix(a, "/"), origin) {
			return true
		}
	}
	return false
}

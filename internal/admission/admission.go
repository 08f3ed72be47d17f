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
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"chat/internal/protocol"

	"github.com/zeromicro/go-zero/rest/httpx"
)

// Identity is who a request speaks for: the user, and what a token says
// of it (SPEC §13).
type Identity struct {
	User string
	// Rooms are the token's rooms claim: patterns (path.Match) of private
	// rooms the user may enter; nil without a token or without the claim.
	Rooms []string
	// Expires is the token's exp; zero: no token, or no exp.
	Expires time.Time
	// Admin: a REST reader with the admin key, who may read every room.
	Admin bool
}

// MatchAny reports whether room matches one of patterns (path.Match).
func MatchAny(patterns []string, room string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, room); ok {
			return true
		}
	}
	return false
}

// CheckPatterns reports the first pattern path.Match refuses.
func CheckPatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("bad room pattern %q: %w", p, err)
		}
	}
	return nil
}

type identityKey struct{}

type readerKey struct{}

// WithReader records who reads through the public REST API; Reader reads
// it back (the zero Identity, an anonymous reader, when none was set).
func WithReader(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, readerKey{}, id)
}

// Reader is who reads through the public REST API (WithReader).
func Reader(ctx context.Context) Identity {
	id, _ := ctx.Value(readerKey{}).(Identity)
	return id
}

// WithIdentity records what token auth established for a request.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// TokenIdentity is what token auth established, if it ran.
func TokenIdentity(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// WriteError answers a refused request with the JSON error body of the REST API.
func WriteError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	httpx.WriteJsonCtx(r.Context(), w, status, protocol.Error{Code: code, Message: message})
}

// Resolve is the session's identity: the token's when auth established
// one, else the normalized ?name=, else a guest name. A bad name is a
// protocol error (400 before the session opens).
func Resolve(r *http.Request) (Identity, error) {
	if id, ok := TokenIdentity(r.Context()); ok {
		return id, nil
	}
	name := r.URL.Query().Get("name")
	if strings.TrimSpace(name) == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		return Identity{User: "guest-" + hex.EncodeToString(b[:])}, nil
	}
	user, err := protocol.NormalizeName(name)
	return Identity{User: user}, err
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

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package middleware

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"chat/internal/admission"
	"chat/internal/protocol"

	"github.com/golang-jwt/jwt/v4"
)

// WsAuthMiddleware is optional token auth for /ws (SPEC §2). With a secret
// set, a HS256 JWT is required, from ?token= (browsers cannot set headers
// on a WebSocket) or Authorization: Bearer; the user is its "name" claim,
// else "sub". Without a secret it passes every request through.
type WsAuthMiddleware struct {
	secret []byte
}

func NewWsAuthMiddleware(secret string) *WsAuthMiddleware {
	return &WsAuthMiddleware{secret: []byte(secret)}
}

func (m *WsAuthMiddleware) Handle(next http.HandlerFunc) http.HandlerFunc {
	if len(m.secret) == 0 {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := m.identity(r)
		if err != nil {
			admission.WriteError(w, r, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
			return
		}
		next(w, r.WithContext(admission.WithIdentity(r.Context(), id)))
	}
}

func (m *WsAuthMiddleware) identity(r *http.Request) (admission.Identity, error) {
	return Identity(r, m.secret)
}

// Identity reads the HS256 token of a request (?token= or Authorization:
// Bearer) signed with secret: its user (name, else sub), its rooms claim (a
// list of room patterns, SPEC §13) and its expiry.
func Identity(r *http.Request, secret []byte) (admission.Identity, error) {
	raw := r.URL.Query().Get("token")
	if raw == "" {
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			raw = strings.TrimSpace(h[7:])
		}
	}
	var none admission.Identity
	if raw == "" {
		return none, errors.New("a token is required")
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}))
	if err != nil {
		return none, errors.New("invalid token")
	}
	var id admission.Identity
	for _, claim := range []string{"name", "sub"} {
		if s, ok := claims[claim].(string); ok && strings.TrimSpace(s) != "" {
			if id.User, err = protocol.NormalizeName(s); err != nil {
				return none, errors.New("the token's user name is not valid")
			}
			break
		}
	}
	if id.User == "" {
		return none, errors.New("the token has no name or sub claim")
	}
	if id.Rooms, err = roomsClaim(claims); err != nil {
		return none, err
	}
	if exp, ok := claims["exp"].(float64); ok {
		id.Expires = time.UnixMilli(int64(exp * 1000))
	}
	return id, nil
}

// roomsClaim reads the rooms claim: absent, or a list of valid room
// patterns; anything else makes the token invalid.
func roomsClaim(claims jwt.MapClaims) ([]string, error) {
	raw, ok := claims["rooms"]
	if !ok {
		return nil, nil
	}
	bad := errors.New("the token's rooms claim must be a list of room patterns")
	list, ok := raw.([]any)
	if !ok {
		return nil, bad
	}
	rooms := make([]string, 0, len(list))
	for _, v := range list {
		p, ok := v.(string)
		if !ok || p == "" {
			return nil, bad
		}
		rooms = append(rooms, p)
	}
	if admission.CheckPatterns(rooms) != nil {
		return nil, bad
	}
	return rooms, nil
}

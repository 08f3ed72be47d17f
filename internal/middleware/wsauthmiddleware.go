// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package middleware

import (
	"errors"
	"net/http"
	"strings"

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
		user, err := m.user(r)
		if err != nil {
			admission.WriteError(w, r, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
			return
		}
		next(w, r.WithContext(admission.WithUser(r.Context(), user)))
	}
}

func (m *WsAuthMiddleware) user(r *http.Request) (string, error) {
	raw := r.URL.Query().Get("token")
	if raw == "" {
		if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			raw = strings.TrimSpace(h[7:])
		}
	}
	if raw == "" {
		return "", errors.New("a token is required")
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) { return m.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}))
	if err != nil {
		return "", errors.New("invalid token")
	}
	for _, claim := range []string{"name", "sub"} {
		if s, ok := claims[claim].(string); ok && strings.TrimSpace(s) != "" {
			user, err := protocol.NormalizeName(s)
			if err != nil {
				return "", errors.New("the token's user name is not valid")
			}
			return user, nil
		}
	}
	return "", errors.New("the token has no name or sub claim")
}

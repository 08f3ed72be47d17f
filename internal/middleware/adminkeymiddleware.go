// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package middleware

import (
	"crypto/subtle"
	"net/http"

	"chat/internal/admission"
	"chat/internal/protocol"
)

// AdminKeyMiddleware guards the admin routes: X-API-Key must equal
// Chat.ApiKey. With no key configured every admin route answers 403
// api_disabled, so no admin action is ever open by default.
type AdminKeyMiddleware struct {
	key []byte
}

func NewAdminKeyMiddleware(key string) *AdminKeyMiddleware {
	return &AdminKeyMiddleware{key: []byte(key)}
}

func (m *AdminKeyMiddleware) Handle(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(m.key) == 0 {
			admission.WriteError(w, r, http.StatusForbidden, protocol.CodeAPIDisabled, "the admin API is disabled: set Chat.ApiKey")
			return
		}
		given := []byte(r.Header.Get("X-API-Key"))
		if subtle.ConstantTimeCompare(given, m.key) != 1 {
			admission.WriteError(w, r, http.StatusForbidden, protocol.CodeForbidden, "X-API-Key is missing or wrong")
			return
		}
		next(w, r)
	}
}

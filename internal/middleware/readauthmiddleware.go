// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package middleware

import (
	"crypto/subtle"
	"net/http"

	"chat/internal/admission"
	"chat/internal/protocol"
)

// ReadAuthMiddleware guards the public REST reads (SPEC §13). With a
// secret set a reader needs Authorization: Bearer <jwt> (401 without), or
// the admin key, which reads every room. The reader's identity goes into
// the request's context, where the logic applies its room access; without
// a secret the reader is anonymous and sees the public rooms
// (Chat.PublicRooms), or every room with the admin key.
type ReadAuthMiddleware struct {
	secret []byte
	apiKey string
}

func NewReadAuthMiddleware(secret, apiKey string) *ReadAuthMiddleware {
	return &ReadAuthMiddleware{secret: []byte(secret), apiKey: apiKey}
}

func (m *ReadAuthMiddleware) Handle(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var id admission.Identity
		key := r.Header.Get("X-API-Key")
		switch {
		case m.apiKey != "" && subtle.ConstantTimeCompare([]byte(key), []byte(m.apiKey)) == 1:
			id.Admin = true
		case len(m.secret) > 0:
			var err error
			if id, err = Identity(r, m.secret); err != nil {
				admission.WriteError(w, r, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
				return
			}
		}
		next(w, r.WithContext(admission.WithReader(r.Context(), id)))
	}
}

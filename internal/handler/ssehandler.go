// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package handler

import (
	"net/http"

	"chat/internal/logic"
	"chat/internal/svc"
)

// open a chat session as a server-sent event stream
//
// goctl's SSE handler encodes one typed value per event from a channel;
// a session's stream is written by the SSE transport instead (batched,
// pre-encoded events, the close event, heartbeats), so the handler hands
// it the request and stays in it for the session's life.
func SseHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		logic.NewSseLogic(r.Context(), svcCtx).Sse(w, r)
	}
}

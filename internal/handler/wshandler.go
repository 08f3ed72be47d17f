// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package handler

import (
	"net/http"

	"chat/internal/logic"
	"chat/internal/svc"
)

// upgrade to a WebSocket chat connection
func WsHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// The logic upgrades (or answers the refusal) and returns at once;
		// nothing may be written after a hijack.
		logic.NewWsLogic(r.Context(), svcCtx).Ws(w, r)
	}
}

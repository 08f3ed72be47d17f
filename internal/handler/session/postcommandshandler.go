// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package session

import (
	"io"
	"net/http"

	"chat/internal/logic/session"
	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/rest/httpx"
)

// post commands to a session
//
// The body is a WebSocket frame's payload (newline-separated JSON
// commands), not one JSON document, so it is read as it is: at most one
// byte over Chat.MaxFrameBytes, which is enough to refuse it.
func PostCommandsHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req types.SessionCommandsReq
		if err := httpx.ParsePath(r, &req); err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
			return
		}
		req.Key = r.Header.Get("X-Session-Key")
		body, err := io.ReadAll(io.LimitReader(r.Body, int64(svcCtx.Config.Chat.MaxFrameBytes)+1))
		if err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
			return
		}

		l := session.NewPostCommandsLogic(r.Context(), svcCtx)
		resp, err := l.PostCommands(&req, body)
		if err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
		} else {
			httpx.WriteJsonCtx(r.Context(), w, http.StatusAccepted, resp)
		}
	}
}

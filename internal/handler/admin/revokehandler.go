// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"net/http"

	"chat/internal/logic/admin"
	"chat/internal/svc"
	"chat/internal/types"
	"github.com/zeromicro/go-zero/rest/httpx"
)

// revoke a user's grant and remove its connections from the room
func RevokeHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req types.RoomUserReq
		if err := httpx.Parse(r, &req); err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
			return
		}

		l := admin.NewRevokeLogic(r.Context(), svcCtx)
		resp, err := l.Revoke(&req)
		if err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
		} else {
			httpx.OkJsonCtx(r.Context(), w, resp)
		}
	}
}

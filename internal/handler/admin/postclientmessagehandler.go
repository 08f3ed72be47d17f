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

// a direct message to one connection
func PostClientMessageHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req types.PostClientMessageReq
		if err := httpx.Parse(r, &req); err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
			return
		}

		l := admin.NewPostClientMessageLogic(r.Context(), svcCtx)
		resp, err := l.PostClientMessage(&req)
		if err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
		} else {
			httpx.OkJsonCtx(r.Context(), w, resp)
		}
	}
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package public

import (
	"net/http"

	"chat/internal/logic/public"
	"chat/internal/svc"
	"github.com/zeromicro/go-zero/rest/httpx"
)

func ListRoomsHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		l := public.NewListRoomsLogic(r.Context(), svcCtx)
		resp, err := l.ListRooms()
		if err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
		} else {
			httpx.OkJsonCtx(r.Context(), w, resp)
		}
	}
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"net/http"

	"chat/internal/logic/admin"
	"chat/internal/svc"
	"github.com/zeromicro/go-zero/rest/httpx"
)

// every live node, and the cluster's connections, users and rooms
func ClusterHandler(svcCtx *svc.ServiceContext) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		l := admin.NewClusterLogic(r.Context(), svcCtx)
		resp, err := l.Cluster()
		if err != nil {
			httpx.ErrorCtx(r.Context(), w, err)
		} else {
			httpx.OkJsonCtx(r.Context(), w, resp)
		}
	}
}

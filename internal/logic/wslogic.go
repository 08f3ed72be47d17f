// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package logic

import (
	"context"
	"net/http"

	"chat/internal/svc"

	"github.com/zeromicro/go-zero/core/logx"
)

type WsLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// upgrade to a WebSocket chat connection
func NewWsLogic(ctx context.Context, svcCtx *svc.ServiceContext) *WsLogic {
	return &WsLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

// Ws hands the request to the WebSocket transport, which admits and upgrades it and runs
// the connection in its own goroutines.
func (l *WsLogic) Ws(w http.ResponseWriter, r *http.Request) {
	l.svcCtx.WS.ServeWS(w, r)
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package logic

import (
	"context"
	"net/http"

	"chat/internal/svc"

	"github.com/zeromicro/go-zero/core/logx"
)

type SseLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// open a chat session as a server-sent event stream
func NewSseLogic(ctx context.Context, svcCtx *svc.ServiceContext) *SseLogic {
	return &SseLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

// Sse hands the request to the SSE transport, which admits it and streams
// the session until it ends.
func (l *SseLogic) Sse(w http.ResponseWriter, r *http.Request) {
	l.svcCtx.SSE.ServeSSE(w, r)
}

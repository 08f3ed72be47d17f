// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type BroadcastLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewBroadcastLogic(ctx context.Context, svcCtx *svc.ServiceContext) *BroadcastLogic {
	return &BroadcastLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *BroadcastLogic) Broadcast(req *types.BroadcastReq) (resp *types.BroadcastResp, err error) {
	notice, err := l.svcCtx.Node.Notice(l.ctx, req.Room, req.Text)
	if err != nil {
		return nil, err
	}
	return &types.BroadcastResp{Room: notice.Room, Ts: notice.TS}, nil
}

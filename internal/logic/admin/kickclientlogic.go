// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type KickClientLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// close one connection with 4003
func NewKickClientLogic(ctx context.Context, svcCtx *svc.ServiceContext) *KickClientLogic {
	return &KickClientLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *KickClientLogic) KickClient(req *types.ClientReq) (resp *types.ClientResp, err error) {
	if err := l.svcCtx.Node.KickClient(l.ctx, req.Client); err != nil {
		return nil, err
	}
	return &types.ClientResp{Client: req.Client}, nil
}

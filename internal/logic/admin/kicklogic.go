// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"chat/internal/protocol"
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type KickLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewKickLogic(ctx context.Context, svcCtx *svc.ServiceContext) *KickLogic {
	return &KickLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *KickLogic) Kick(req *types.UserReq) (resp *types.KickResp, err error) {
	user, err := protocol.NormalizeName(req.User)
	if err != nil {
		return nil, err
	}
	closed, err := l.svcCtx.Node.Kick(l.ctx, user)
	if err != nil {
		return nil, err
	}
	return &types.KickResp{User: user, Closed: closed}, nil
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package public

import (
	"chat/internal/protocol"
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type GetUserLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewGetUserLogic(ctx context.Context, svcCtx *svc.ServiceContext) *GetUserLogic {
	return &GetUserLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *GetUserLogic) GetUser(req *types.UserReq) (resp *types.UserResp, err error) {
	user, err := protocol.NormalizeName(req.User)
	if err != nil {
		return nil, err
	}
	n, err := l.svcCtx.Node.UserConnections(l.ctx, user)
	if err != nil {
		return nil, err
	}
	return &types.UserResp{User: user, Online: n > 0, Connections: n}, nil
}

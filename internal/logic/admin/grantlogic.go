// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/protocol"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type GrantLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// grant a user a private room and join every connection it has
func NewGrantLogic(ctx context.Context, svcCtx *svc.ServiceContext) *GrantLogic {
	return &GrantLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *GrantLogic) Grant(req *types.RoomUserReq) (resp *types.GrantResp, err error) {
	user, err := protocol.NormalizeName(req.User)
	if err != nil {
		return nil, err
	}
	n, err := l.svcCtx.Node.Grant(l.ctx, req.Room, user)
	if err != nil {
		return nil, err
	}
	return &types.GrantResp{Room: req.Room, User: user, Connections: n}, nil
}

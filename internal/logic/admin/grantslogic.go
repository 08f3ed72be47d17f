// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type GrantsLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// the users granted a room
func NewGrantsLogic(ctx context.Context, svcCtx *svc.ServiceContext) *GrantsLogic {
	return &GrantsLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *GrantsLogic) Grants(req *types.RoomReq) (resp *types.GrantsResp, err error) {
	users, err := l.svcCtx.Node.Grants(l.ctx, req.Room)
	if err != nil {
		return nil, err
	}
	return &types.GrantsResp{Room: req.Room, Users: users}, nil
}

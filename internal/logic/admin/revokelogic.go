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

type RevokeLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// revoke a user's grant and remove its connections from the room
func NewRevokeLogic(ctx context.Context, svcCtx *svc.ServiceContext) *RevokeLogic {
	return &RevokeLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *RevokeLogic) Revoke(req *types.RoomUserReq) (resp *types.RevokeResp, err error) {
	user, err := protocol.NormalizeName(req.User)
	if err != nil {
		return nil, err
	}
	n, err := l.svcCtx.Node.Revoke(l.ctx, req.Room, user)
	if err != nil {
		return nil, err
	}
	return &types.RevokeResp{Room: req.Room, User: user, Removed: n}, nil
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package public

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type RoomMembersLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewRoomMembersLogic(ctx context.Context, svcCtx *svc.ServiceContext) *RoomMembersLogic {
	return &RoomMembersLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *RoomMembersLogic) RoomMembers(req *types.RoomReq) (resp *types.MembersResp, err error) {
	members, err := l.svcCtx.Node.Members(l.ctx, req.Room)
	if err != nil {
		return nil, err
	}
	resp = &types.MembersResp{Room: req.Room, Members: make([]types.Member, len(members))}
	for i, m := range members {
		resp.Members[i] = types.Member{User: m.User, Connections: m.Connections}
	}
	return resp, nil
}

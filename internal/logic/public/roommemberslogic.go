// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package public

import (
	"context"

	"chat/internal/admission"

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

func (l *RoomMembersLogic) RoomMembers(req *types.MembersReq) (resp *types.MembersResp, err error) {
	if err := l.svcCtx.Node.ReaderAccess(l.ctx, req.Room, admission.Reader(l.ctx)); err != nil {
		return nil, err
	}
	page, err := l.svcCtx.Node.Members(l.ctx, req.Room, req.After, req.Limit)
	if err != nil {
		return nil, err
	}
	resp = &types.MembersResp{Room: req.Room, Members: make([]types.Member, len(page.Members)), Count: page.Count}
	for i, m := range page.Members {
		resp.Members[i] = types.Member{User: m.User, Connections: m.Connections}
	}
	return resp, nil
}

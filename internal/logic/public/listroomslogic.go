// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package public

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type ListRoomsLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewListRoomsLogic(ctx context.Context, svcCtx *svc.ServiceContext) *ListRoomsLogic {
	return &ListRoomsLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *ListRoomsLogic) ListRooms() (resp *types.RoomsResp, err error) {
	rooms, err := l.svcCtx.Node.Rooms(l.ctx)
	if err != nil {
		return nil, err
	}
	resp = &types.RoomsResp{Rooms: make([]types.RoomInfo, len(rooms))}
	for i, r := range rooms {
		resp.Rooms[i] = types.RoomInfo{Room: r.Room, Members: r.Members, Seq: r.Seq}
	}
	return resp, nil
}

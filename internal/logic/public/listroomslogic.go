// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package public

import (
	"context"

	"chat/internal/admission"
	"chat/internal/protocol"

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
	// The reader sees the rooms it may read (SPEC §13).
	reader := admission.Reader(l.ctx)
	resp = &types.RoomsResp{Rooms: make([]types.RoomInfo, 0, len(rooms))}
	for _, r := range rooms {
		if err := l.svcCtx.Node.ReaderAccess(l.ctx, r.Room, reader); err != nil {
			if protocol.AsError(err).Code == protocol.CodeForbidden {
				continue
			}
			return nil, err
		}
		resp.Rooms = append(resp.Rooms, types.RoomInfo{Room: r.Room, Members: r.Members, Seq: r.Seq})
	}
	return resp, nil
}

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

type RoomMessagesLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewRoomMessagesLogic(ctx context.Context, svcCtx *svc.ServiceContext) *RoomMessagesLogic {
	return &RoomMessagesLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *RoomMessagesLogic) RoomMessages(req *types.MessagesReq) (resp *types.MessagesResp, err error) {
	if err := l.svcCtx.Node.ReaderAccess(l.ctx, req.Room, admission.Reader(l.ctx)); err != nil {
		return nil, err
	}
	msgs, err := l.svcCtx.Node.History(l.ctx, req.Room, req.Before, req.Limit)
	if err != nil {
		return nil, err
	}
	resp = &types.MessagesResp{Room: req.Room, Messages: make([]types.Message, len(msgs))}
	for i, m := range msgs {
		resp.Messages[i] = types.Message{Type: m.Type, Room: m.Room, Epoch: m.Epoch, Seq: m.Seq, Id: m.ID, From: m.From, Text: m.Text, Ts: m.TS}
	}
	return resp, nil
}

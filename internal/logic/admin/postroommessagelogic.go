// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type PostRoomMessageLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewPostRoomMessageLogic(ctx context.Context, svcCtx *svc.ServiceContext) *PostRoomMessageLogic {
	return &PostRoomMessageLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *PostRoomMessageLogic) PostRoomMessage(req *types.PostRoomMessageReq) (resp *types.PostRoomMessageResp, err error) {
	from, err := senderName(req.From)
	if err != nil {
		return nil, err
	}
	msg, err := l.svcCtx.Node.Publish(l.ctx, req.Room, from, req.Text, "")
	if err != nil {
		return nil, err
	}
	return &types.PostRoomMessageResp{Room: msg.Room, Seq: msg.Seq, Ts: msg.TS}, nil
}

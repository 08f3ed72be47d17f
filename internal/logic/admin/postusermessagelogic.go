// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"chat/internal/protocol"
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type PostUserMessageLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewPostUserMessageLogic(ctx context.Context, svcCtx *svc.ServiceContext) *PostUserMessageLogic {
	return &PostUserMessageLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *PostUserMessageLogic) PostUserMessage(req *types.PostUserMessageReq) (resp *types.PostUserMessageResp, err error) {
	from, err := senderName(req.From)
	if err != nil {
		return nil, err
	}
	to, err := protocol.NormalizeName(req.User)
	if err != nil {
		return nil, err
	}
	_, n, err := l.svcCtx.Node.Direct(l.ctx, from, to, req.Text, "")
	if err != nil {
		return nil, err
	}
	return &types.PostUserMessageResp{User: to, Connections: n, Stored: n == 0}, nil
}

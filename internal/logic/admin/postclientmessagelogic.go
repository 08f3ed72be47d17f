// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type PostClientMessageLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// a direct message to one connection
func NewPostClientMessageLogic(ctx context.Context, svcCtx *svc.ServiceContext) *PostClientMessageLogic {
	return &PostClientMessageLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *PostClientMessageLogic) PostClientMessage(req *types.PostClientMessageReq) (resp *types.ClientResp, err error) {
	from, err := senderName(req.From)
	if err != nil {
		return nil, err
	}
	if err := l.svcCtx.Node.DirectToClient(l.ctx, req.Client, from, req.Text); err != nil {
		return nil, err
	}
	return &types.ClientResp{Client: req.Client}, nil
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package session

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type PostCommandsLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// post commands to a session
func NewPostCommandsLogic(ctx context.Context, svcCtx *svc.ServiceContext) *PostCommandsLogic {
	return &PostCommandsLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

// PostCommands hands a frame of commands to the session, wherever it runs.
func (l *PostCommandsLogic) PostCommands(req *types.SessionCommandsReq, frame []byte) (*types.SessionCommandsResp, error) {
	n, err := l.svcCtx.Node.PostCommands(l.ctx, req.Session, req.Key, frame)
	if err != nil {
		return nil, err
	}
	return &types.SessionCommandsResp{Accepted: n}, nil
}

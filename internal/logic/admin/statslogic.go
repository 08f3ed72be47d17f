// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type StatsLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

func NewStatsLogic(ctx context.Context, svcCtx *svc.ServiceContext) *StatsLogic {
	return &StatsLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *StatsLogic) Stats() (resp *types.StatsResp, err error) {
	s := l.svcCtx.Node.Stats()
	return &types.StatsResp{
		Node:          s.Node,
		Connections:   s.Connections,
		Rooms:         s.Rooms,
		UptimeSeconds: s.UptimeSeconds,
		Received:      s.Received,
		Delivered:     s.Delivered,
		SlowConsumers: s.SlowConsumers,
	}, nil
}

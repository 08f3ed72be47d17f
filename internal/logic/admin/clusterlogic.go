// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package admin

import (
	"context"
	"time"

	"chat/internal/svc"
	"chat/internal/types"

	"github.com/zeromicro/go-zero/core/logx"
)

type ClusterLogic struct {
	logx.Logger
	ctx    context.Context
	svcCtx *svc.ServiceContext
}

// every live node, and the cluster's connections, users and rooms
func NewClusterLogic(ctx context.Context, svcCtx *svc.ServiceContext) *ClusterLogic {
	return &ClusterLogic{
		Logger: logx.WithContext(ctx),
		ctx:    ctx,
		svcCtx: svcCtx,
	}
}

func (l *ClusterLogic) Cluster() (resp *types.ClusterResp, err error) {
	c, err := l.svcCtx.Node.Cluster(l.ctx)
	if err != nil {
		return nil, err
	}
	resp = &types.ClusterResp{Nodes: make([]types.ClusterNode, len(c.Nodes)), Connections: c.Connections, Users: c.Users, Rooms: c.Rooms}
	for i, n := range c.Nodes {
		resp.Nodes[i] = types.ClusterNode{Node: n.Node, Connections: n.Connections, UptimeSeconds: int64(time.Since(n.Started).Seconds())}
	}
	return resp, nil
}

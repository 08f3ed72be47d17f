// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package svc

import (
	"chat/internal/broker"
	"chat/internal/broker/memory"
	"chat/internal/broker/redisbroker"
	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/middleware"
	"chat/internal/transport/sse"
	"chat/internal/transport/ws"

	"github.com/zeromicro/go-zero/rest"
)

// ServiceContext is where the service's parts are built and wired.
type ServiceContext struct {
	Config   config.Config
	Node     *chat.Node
	WS       *ws.Transport  // /ws
	SSE      *sse.Transport // /sse
	WsAuth   rest.Middleware
	ReadAuth rest.Middleware
	AdminKey rest.Middleware
}

// NewServiceContext builds the node on the broker the config selects.
func NewServiceContext(c config.Config) (*ServiceContext, error) {
	node, err := chat.NewNode(c.Chat, newBroker(c))
	if err != nil {
		return nil, err
	}
	return &ServiceContext{
		Config:   c,
		Node:     node,
		WS:       ws.New(node),
		SSE:      sse.New(node),
		WsAuth:   middleware.NewWsAuthMiddleware(c.Auth.AccessSecret).Handle,
		ReadAuth: middleware.NewReadAuthMiddleware(c.Auth.AccessSecret, c.Chat.ApiKey).Handle,
		AdminKey: middleware.NewAdminKeyMiddleware(c.Chat.ApiKey).Handle,
	}, nil
}

func newBroker(c config.Config) chat.NewBroker {
	opts := broker.Options{
		HistorySize: c.Chat.HistorySize,
		HistoryTTL:  c.Chat.HistoryTTL,
		PresenceTTL: c.Chat.PresenceTTL,

		HistoryMaxBytes: c.Chat.HistoryMaxBytes,
	}
	return func(node string, h broker.Handler) (broker.Broker, error) {
		if c.Redis.Addr == "" {
			return memory.NewBackend(opts).NamedNode(node, h), nil
		}
		return redisbroker.New(redisbroker.Options{
			Options:  opts,
			Addr:     c.Redis.Addr,
			Password: c.Redis.Password,
			DB:       c.Redis.DB,
			Prefix:   c.Redis.Prefix,
			Node:     node,
		}, h)
	}
}

// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

package svc

import (
	"errors"
	"fmt"

	"chat/internal/broker"
	"chat/internal/broker/memory"
	"chat/internal/broker/redisbroker"
	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/middleware"
	"chat/internal/store"
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

// NewServiceContext builds the node on the broker and the store the config
// selects.
func NewServiceContext(c config.Config) (*ServiceContext, error) {
	var (
		opts []chat.Option
		st   *store.Store
		err  error
	)
	if c.Store.Driver != "" {
		if st, err = openStore(c.Store); err != nil {
			return nil, err
		}
		// The memory broker's history dies with the process: there a send
		// is answered once its message is stored. Redis keeps it for the
		// sweepers to copy on.
		opts = append(opts, chat.WithStore(st, chat.StoreOptions{Retention: c.Store.Retention, SyncSends: c.Redis.InMemory()}))
	}
	node, err := chat.NewNode(c.Chat, newBroker(c), opts...)
	if err != nil {
		if st != nil {
			_ = st.Close()
		}
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
	return func(w chat.Wiring) (broker.Broker, error) {
		opts := opts
		opts.Heads, opts.StoreDelay = w.Heads, w.StoreDelay
		if c.Redis.InMemory() {
			return memory.NewBackend(opts).NamedNode(w.Node, w.Handler), nil
		}
		return redisbroker.New(redisbroker.Options{
			Options:        opts,
			Mode:           c.Redis.Mode,
			Addr:           c.Redis.Addr,
			MasterName:     c.Redis.MasterName,
			SentinelAddrs:  c.Redis.SentinelAddrs,
			Addrs:          c.Redis.Addrs,
			Password:       c.Redis.Password,
			DB:             c.Redis.DB,
			Prefix:         c.Redis.Prefix,
			Node:           w.Node,
			MinReplicaAcks: c.Redis.MinReplicaAcks,
		}, w.Handler)
	}
}

// openStore opens the store Store.Driver names.
func openStore(c config.StoreConf) (*store.Store, error) {
	dsn := c.DSN
	switch c.Driver {
	case store.DriverSQLite:
		if dsn == "" {
			dsn = "chat.db"
		}
	case store.DriverMySQL:
		if dsn == "" {
			return nil, errors.New("Store.DSN: a MySQL DSN is required with Store.Driver mysql")
		}
	default:
		return nil, fmt.Errorf("Store.Driver: %q is not a store; use \"\" (none), %q or %q", c.Driver, store.DriverSQLite, store.DriverMySQL)
	}
	st, err := store.Open(c.Driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("Store: %w", err)
	}
	return st, nil
}

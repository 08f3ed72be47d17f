// Code scaffolded by goctl. Safe to edit.
// goctl 1.9.2

// Command chat is the chat service: the page at /, WebSockets at /ws and the
// REST API under /api.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	"chat/internal/chat"
	"chat/internal/config"
	"chat/internal/server"

	"github.com/zeromicro/go-zero/core/conf"
	"github.com/zeromicro/go-zero/core/logx"
)

var configFile = flag.String("f", "etc/chat-api.yaml", "the config file")

func main() {
	flag.Parse()

	var c config.Config
	conf.MustLoad(*configFile, &c)
	if err := applyPortEnv(&c); err != nil {
		logx.Must(err)
	}

	srv, ctx, err := server.New(c)
	logx.Must(err)
	chat.RegisterMetrics(ctx.Node)
	defer ctx.Node.Shutdown()

	fmt.Printf("Starting server at %s:%d...\n", c.Host, c.Port)
	srv.Start() // with the HTTP hardening of SPEC §11 (server.Server)
}

// applyPortEnv applies CHAT_PORT: RestConf's embedded Port cannot take an
// env tag (SPEC §5).
func applyPortEnv(c *config.Config) error {
	p := os.Getenv("CHAT_PORT")
	if p == "" {
		return nil
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return fmt.Errorf("CHAT_PORT=%q is not a port", p)
	}
	c.Port = port
	return nil
}

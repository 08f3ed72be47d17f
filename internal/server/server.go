// Package server assembles the service: go-zero's REST server with the
// generated routes, the embedded page, the error mapping of SPEC §7, and the
// graceful shutdown of SPEC §4. main and the end-to-end tests both use it,
// so the tests run the service as it ships.
package server

import (
	"context"
	"errors"
	"io/fs"
	"net/http"

	"chat/internal/config"
	"chat/internal/handler"
	"chat/internal/protocol"
	"chat/internal/svc"
	"chat/static"

	"github.com/zeromicro/go-zero/core/proc"
	"github.com/zeromicro/go-zero/rest"
	"github.com/zeromicro/go-zero/rest/httpx"
)

// New builds the server and its node. Start it with Start; Stop, or a
// SIGTERM/SIGINT, drains it.
func New(c config.Config) (*rest.Server, *svc.ServiceContext, error) {
	sub, err := fs.Sub(static.Files, ".")
	if err != nil {
		return nil, nil, err
	}
	ctx, err := svc.NewServiceContext(c)
	if err != nil {
		return nil, nil, err
	}
	server, err := rest.NewServer(c.RestConf, rest.WithFileServer("/", http.FS(sub)))
	if err != nil {
		ctx.Node.Shutdown()
		return nil, nil, err
	}
	handler.RegisterHandlers(server, ctx)
	httpx.SetErrorHandlerCtx(errorBody)

	// From the signal on, /readyz and new /ws answer 503; after go-zero's
	// wrap-up time every socket is closed with 1001 once its queue is
	// written. go-zero's own Shutdown ignores hijacked connections.
	node := ctx.Node
	proc.AddWrapUpListener(node.StopAccepting)
	proc.AddShutdownListener(node.Shutdown)
	return server, ctx, nil
}

// errorBody maps errors to SPEC §7's {"code","message"} and HTTP status.
func errorBody(_ context.Context, err error) (int, any) {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		// httpx.Parse's errors: a missing or malformed field.
		return http.StatusBadRequest, protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()}
	}
	return statusOf(pe.Code), pe
}

func statusOf(code string) int {
	switch code {
	case protocol.CodeUnauthorized:
		return http.StatusUnauthorized
	case protocol.CodeAPIDisabled, protocol.CodeForbidden:
		return http.StatusForbidden
	case protocol.CodeUserOffline:
		return http.StatusNotFound
	case protocol.CodeUnavailable:
		return http.StatusServiceUnavailable
	case protocol.CodeInternal:
		return http.StatusInternalServerError
	case protocol.CodeRateLimited:
		return http.StatusTooManyRequests
	default:
		return http.StatusBadRequest
	}
}

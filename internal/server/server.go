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
	// go-zero answers a body over MaxBytes with an empty 413; SPEC §7 wants
	// every error as {"code","message"}, so the service checks it instead.
	rc := c.RestConf
	rc.Middlewares.MaxBytes = false
	server, err := rest.NewServer(rc, rest.WithFileServer("/", http.FS(sub)))
	if err != nil {
		ctx.Node.Shutdown()
		return nil, nil, err
	}
	if c.Middlewares.MaxBytes && c.MaxBytes > 0 {
		server.Use(limitBody(c.MaxBytes))
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
	// A value, not the *Error: httpx writes a body that is an error as text.
	return statusOf(pe.Code), *pe
}

// limitBody refuses a request whose Content-Length is over n with 413.
// go-zero reads no body without a Content-Length, so that is the whole check.
func limitBody(n int64) rest.Middleware {
	return func(next http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > n {
				httpx.WriteJsonCtx(r.Context(), w, http.StatusRequestEntityTooLarge,
					protocol.Errorf(protocol.CodeBadRequest, "the request body is over %d bytes", n))
				return
			}
			next(w, r)
		}
	}
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

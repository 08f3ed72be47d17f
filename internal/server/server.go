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
	"regexp"
	"slices"

	"chat/internal/config"
	"chat/internal/handler"
	"chat/internal/protocol"
	"chat/internal/svc"
	"chat/static"

	"github.com/zeromicro/go-zero/core/proc"
	"github.com/zeromicro/go-zero/rest"
	"github.com/zeromicro/go-zero/rest/httpx"
)

// Server is go-zero's REST server with the HTTP settings of SPEC §11, which
// go-zero's config cannot express: Start and StartWithOpts apply them.
type Server struct {
	*rest.Server
	opts []rest.StartOption
}

// Start serves until the process is told to stop.
func (s *Server) Start() { s.Server.StartWithOpts(s.opts...) }

// StartWithOpts is Start with more options, applied after the service's own.
func (s *Server) StartWithOpts(opts ...rest.StartOption) {
	s.Server.StartWithOpts(append(slices.Clip(s.opts), opts...)...)
}

// New builds the server and its node. Start it with Start; Stop, or a
// SIGTERM/SIGINT, drains it.
func New(c config.Config) (*Server, *svc.ServiceContext, error) {
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
	return &Server{Server: server, opts: []rest.StartOption{httpHardening(c.Chat)}}, ctx, nil
}

// httpHardening sets what an internet-facing HTTP server needs and go-zero
// leaves unset (SPEC §11). go-zero takes its read and write timeouts from
// the routes' longest timeout, and /ws has none (its handler returns at
// once), so without these a client that sends its headers slowly, or not
// at all, holds a goroutine and a descriptor for ever. Neither timeout
// touches an upgraded WebSocket: net/http clears the header deadline once
// the headers are read, and a hijacked connection is never idle to it.
// The security headers wrap the whole handler, so that they reach the
// page too (go-zero's file server skips its middlewares) and every error.
func httpHardening(c config.ChatConf) rest.StartOption {
	return func(h *http.Server) {
		h.ReadHeaderTimeout = c.ReadHeaderTimeout
		h.IdleTimeout = c.IdleTimeout
		h.Handler = securityHeaders(h.Handler)
	}
}

// securityHeaders sets SPEC §11's headers on every response: the page may
// load only its own files and connect only to its own host (over http(s)
// and ws(s)), may not be framed, and sends no referrer.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy(r.Host))
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// hostPattern is a host[:port] that may be written into a header as is;
// anything else (a Host header carrying ';' or spaces could add directives)
// leaves connect-src at 'self'.
var hostPattern = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$`)

// contentSecurityPolicy names ws: and wss: of the page's host beside
// 'self', which older browsers do not extend to WebSockets. The icon is a
// data: URL (index.html), so that the page asks for no favicon.
func contentSecurityPolicy(host string) string {
	connect := "'self'"
	if hostPattern.MatchString(host) {
		connect += " ws://" + host + " wss://" + host
	}
	return "default-src 'self'; connect-src " + connect + "; img-src 'self' data:; " +
		"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
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
	case protocol.CodeUserOffline, protocol.CodeSessionClosed, protocol.CodeClientOffline:
		return http.StatusNotFound
	case protocol.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
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

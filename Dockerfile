# The chat service as one static binary in a minimal image (SPEC §9).
#
#   docker build -t chat .
#   docker run --rm -p 8888:8888 chat                # then open http://localhost:8888/
#   docker run --rm -p 8888:8888 -e CHAT_API_KEY=change-me chat
#
# Configured by environment alone: CHAT_PORT, CHAT_REDIS_ADDR, CHAT_API_KEY
# and CHAT_ACCESS_SECRET override etc/chat-api.yaml (see README.md).

# --- build -------------------------------------------------------------------
# Matches go.mod's go line (go 1.26.x).
FROM golang:1.26 AS build
WORKDIR /src

# Modules first, so that a change to the code does not download them again.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
# The same build command as .ci/run uses: a static binary (no cgo), no
# local paths, no symbol tables. The page under static/ is embedded.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/chat .

# --- run ---------------------------------------------------------------------
# distroless static: no shell, no package manager; the :nonroot tag runs as
# uid/gid 65532. The binary needs nothing else (no libc, no CA bundle: it
# makes no TLS calls).
FROM gcr.io/distroless/static-debian12:nonroot
WORKDIR /app
COPY --from=build /out/chat /app/chat
COPY --from=build /src/etc/chat-api.yaml /app/etc/chat-api.yaml
# Numeric, so that Kubernetes runAsNonRoot can verify it.
USER 65532:65532

# 8888: the page, /ws, /api, /healthz and /readyz (CHAT_PORT moves it).
# 6470: go-zero's DevServer with Prometheus metrics at /metrics (set in
# etc/chat-api.yaml; publish it only to the metrics scraper).
EXPOSE 8888 6470

# SIGTERM drains: /readyz and new /ws answer 503 at once, every socket is
# closed with 1001 after its queue is written, and the process exits 0
# before go-zero's Shutdown.WaitTime (13s). Give the container more than that
# to stop (docker stop -t 20, or a Kubernetes grace period of 20s or more).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/chat", "-f", "/app/etc/chat-api.yaml"]

#!/usr/bin/env bash
# Two chat replicas sharing one Redis, as local processes (the topology of
# docker-compose.yml without Docker or a load balancer):
#
#   scripts/cluster.sh                      # then open both URLs it prints
#   CHAT_API_KEY=k scripts/cluster.sh       # with the admin REST API on
#
# - Redis: uses the one at 127.0.0.1:6379, or starts one there (no
#   persistence) and leaves it running afterwards; a Redis that was already
#   running is never stopped.
# - Builds the binary once into a temporary directory (TMPDIR, made with
#   mktemp), with one config per replica: etc/chat-api.yaml with the
#   DevServer (metrics) port changed, as two replicas cannot share 6470.
# - Replica 1: http://127.0.0.1:8881/ (metrics :6471/metrics)
#   Replica 2: http://127.0.0.1:8882/ (metrics :6472/metrics)
# - Ctrl-C (or SIGTERM, or any exit) sends SIGTERM to both replicas and
#   waits while they drain (up to go-zero's Shutdown.WaitTime, 13s).
#
# Everything else comes from the environment as usual (CHAT_API_KEY,
# CHAT_ACCESS_SECRET); CHAT_PORT and CHAT_REDIS_ADDR are set here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REDIS_HOST=127.0.0.1
REDIS_PORT=6379
PORTS=(8881 8882)
DEV_PORTS=(6471 6472)

die() {
	printf 'cluster: %s\n' "$*" >&2
	exit 1
}
say() { printf 'cluster: %s\n' "$*"; }

for cmd in go curl redis-cli; do
	command -v "$cmd" >/dev/null || die "$cmd is not installed"
done

# go build and goctl use TMPDIR (SPEC §10): a fresh directory of our own,
# removed on exit.
TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/chat-cluster.XXXXXX")
export TMPDIR

PIDS=()
LOGS=()
TAIL_PID=""
CLEANED=""
cleanup() {
	local status=$?
	[[ -n $CLEANED ]] && return
	CLEANED=1
	trap - INT TERM
	if ((${#PIDS[@]})); then
		say "stopping replicas (SIGTERM, draining)..."
		for pid in "${PIDS[@]}"; do
			kill -TERM "$pid" 2>/dev/null || true
		done
		for i in "${!PIDS[@]}"; do
			local rc=0
			wait "${PIDS[$i]}" 2>/dev/null || rc=$?
			say "replica :${PORTS[$i]} exited with status $rc"
		done
	fi
	if [[ -n $TAIL_PID ]]; then
		kill "$TAIL_PID" 2>/dev/null || true
		wait "$TAIL_PID" 2>/dev/null || true
	elif ((status != 0 && status != 130 && status != 143)) && ((${#LOGS[@]})); then
		# Failed before the logs were shown: show why, as they go with TMPDIR.
		for log in "${LOGS[@]}"; do
			[[ -s $log ]] || continue
			printf '\n--- last lines of %s ---\n' "${log##*/}" >&2
			tail -n 20 "$log" >&2 || true
		done
	fi
	rm -rf "$TMPDIR"
	exit "$status"
}
trap cleanup EXIT
# An exit from these runs the EXIT trap; the status says what stopped us.
trap 'exit 130' INT
trap 'exit 143' TERM

redis_ok() {
	[[ $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

# --- Redis -------------------------------------------------------------------
if redis_ok; then
	say "using the Redis at $REDIS_HOST:$REDIS_PORT"
else
	command -v redis-server >/dev/null ||
		die "no Redis at $REDIS_HOST:$REDIS_PORT and redis-server is not installed"
	say "starting redis-server on $REDIS_HOST:$REDIS_PORT (no persistence; left running)"
	redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no --daemonize yes >/dev/null
	for _ in $(seq 1 50); do
		redis_ok && break
		sleep 0.1
	done
	redis_ok || die "redis-server did not answer on $REDIS_HOST:$REDIS_PORT"
fi

# --- build and configs -------------------------------------------------------
for port in "${PORTS[@]}" "${DEV_PORTS[@]}"; do
	# curl's 7 is "connection refused": the port is free.
	rc=0
	curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" || rc=$?
	((rc == 7)) || die "port $port is already in use (another cluster.sh?; curl exit $rc)"
done

say "building into $TMPDIR/chat"
go build -o "$TMPDIR/chat" .

for i in "${!PORTS[@]}"; do
	cfg="$TMPDIR/chat-${PORTS[$i]}.yaml"
	sed -E "s/^([[:space:]]*)Port: 6470([[:space:]]*)$/\1Port: ${DEV_PORTS[$i]}/" etc/chat-api.yaml >"$cfg"
	grep -Eq "^[[:space:]]+Port: ${DEV_PORTS[$i]}\$" "$cfg" ||
		die "etc/chat-api.yaml has no 'Port: 6470' line (DevServer) to replace"
done

# --- replicas ----------------------------------------------------------------
# Each replica in its own process group (job control on while starting
# them), so that Ctrl-C in the terminal reaches only this script. go-zero
# drains on the first SIGINT or SIGTERM and dies at once on a second one, so
# a replica must not get both the terminal's SIGINT and our SIGTERM.
set -m
for i in "${!PORTS[@]}"; do
	port=${PORTS[$i]}
	log="$TMPDIR/chat-$port.log"
	LOGS+=("$log")
	CHAT_REDIS_ADDR="$REDIS_HOST:$REDIS_PORT" CHAT_PORT="$port" \
		"$TMPDIR/chat" -f "$TMPDIR/chat-$port.yaml" >"$log" 2>&1 </dev/null &
	PIDS+=("$!")
done
set +m

for i in "${!PORTS[@]}"; do
	port=${PORTS[$i]}
	ready=""
	for _ in $(seq 1 100); do
		kill -0 "${PIDS[$i]}" 2>/dev/null || die "replica :$port exited during startup"
		if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz"; then
			ready=1
			break
		fi
		sleep 0.1
	done
	[[ -n $ready ]] || die "replica :$port is not ready after 10s"
done

say "ready (Redis $REDIS_HOST:$REDIS_PORT):"
for i in "${!PORTS[@]}"; do
	printf '  http://127.0.0.1:%s/   (metrics http://127.0.0.1:%s/metrics)\n' "${PORTS[$i]}" "${DEV_PORTS[$i]}"
done
if [[ -z ${CHAT_API_KEY:-} ]]; then
	say "CHAT_API_KEY is not set: admin REST routes answer 403 api_disabled"
fi
say "Ctrl-C stops both. Replica logs follow."

# The replicas' logs, with tail's "==> file <==" headers saying which is which.
set -m
tail -n +1 -F "${LOGS[@]}" &
TAIL_PID=$!
set +m

# Until a signal, or until a replica dies by itself.
while :; do
	for i in "${!PIDS[@]}"; do
		if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
			rc=0
			wait "${PIDS[$i]}" 2>/dev/null || rc=$?
			unset 'PIDS[i]'
			die "replica :${PORTS[$i]} exited by itself (status $rc)"
		fi
	done
	sleep 1
done

#!/usr/bin/env bash
# Redis beyond one server (SPEC §15), as local processes without Docker:
#
#   scripts/redis-ha.sh sentinel   # master :6380, replica :6381, sentinels :26379-26381
#   scripts/redis-ha.sh cluster    # three masters and three replicas on :7000-7005
#
# - Sentinel: one master, one replica, three sentinels (quorum 2) watching
#   the master as "chatmaster"; redis-sentinel when installed, else
#   redis-server --sentinel (the same program).
# - Cluster: six nodes joined by redis-cli --cluster create with one
#   replica per master; each node also listens on its port + 10000 (the
#   cluster bus, 17000-17005).
# - Everything on 127.0.0.1, without persistence, with the settings of the
#   tests (internal/chattest/redisha.go): a master is declared down after
#   one second, so a failover takes a few seconds.
# - Configs, logs and working directories go to a temporary directory
#   (mktemp), removed on exit. Once healthy it prints the addresses, the
#   Redis block for etc/chat-api.yaml and how to cause a failover, then
#   follows the logs.
# - Ctrl-C (or SIGTERM, or any exit) stops every process it started.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=127.0.0.1
MASTER_NAME=chatmaster
MASTER_PORT=6380
REPLICA_PORT=6381
SENTINEL_PORTS=(26379 26380 26381)
CLUSTER_PORTS=(7000 7001 7002 7003 7004 7005)
CLUSTER_BUS_OFFSET=10000
DOWN_AFTER_MS=1000 # sentinel down-after-milliseconds, cluster-node-timeout
FAILOVER_TIMEOUT_MS=5000

die() {
	printf 'redis-ha: %s\n' "$*" >&2
	exit 1
}
say() { printf 'redis-ha: %s\n' "$*"; }

usage() {
	printf 'usage: %s sentinel|cluster\n' "$0" >&2
	exit 2
}
(($# == 1)) || usage
MODE=$1
[[ $MODE == sentinel || $MODE == cluster ]] || usage

for cmd in redis-server redis-cli; do
	command -v "$cmd" >/dev/null || die "$cmd is not installed (Debian: apt-get install redis-server)"
done

TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/chat-redis-ha.XXXXXX")
export TMPDIR

PIDS=()  # every process started, in start order
NAMES=() # what each is ("master :6380"), for messages
LOGS=()
TAIL_PID=""
CLEANED=""
cleanup() {
	local status=$?
	[[ -n $CLEANED ]] && return
	CLEANED=1
	trap - INT TERM
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
	if ((${#PIDS[@]})); then
		say "stopping every process..."
		for pid in "${PIDS[@]}"; do
			kill -TERM "$pid" 2>/dev/null || true
		done
		for pid in "${PIDS[@]}"; do
			wait "$pid" 2>/dev/null || true
		done
	fi
	rm -rf "$TMPDIR"
	exit "$status"
}
trap cleanup EXIT
# An exit from these runs the EXIT trap; the status says what stopped us.
trap 'exit 130' INT
trap 'exit 143' TERM

cli() { redis-cli -h "$HOST" -p "$@" 2>/dev/null; }

# port_busy: something accepts connections on the port already.
port_busy() { (: <"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_until SECONDS WHAT COMMAND...: retries COMMAND every 0.1s, and
# gives up as soon as a process has exited.
wait_until() {
	local seconds=$1 what=$2
	shift 2
	for _ in $(seq 1 $((seconds * 10))); do
		"$@" && return 0
		for i in "${!PIDS[@]}"; do
			kill -0 "${PIDS[$i]}" 2>/dev/null || die "${NAMES[$i]} exited while waiting for: $what"
		done
		sleep 0.1
	done
	die "$what: not within ${seconds}s"
}

# start NAME LOG COMMAND...: runs COMMAND in its own process group (job
# control on), so that Ctrl-C in the terminal reaches only this script and
# the processes stop in cleanup.
start() {
	local name=$1 log=$2
	shift 2
	set -m
	"$@" >"$log" 2>&1 </dev/null &
	set +m
	PIDS+=("$!")
	NAMES+=("$name")
	LOGS+=("$log")
}

# start_redis NAME PORT FLAGS...: a data node without persistence; a full
# sync starts at once instead of waiting five seconds for more replicas.
start_redis() {
	local name=$1 port=$2
	shift 2
	local dir="$TMPDIR/$port"
	mkdir -p "$dir"
	start "$name :$port" "$TMPDIR/$name-$port.log" \
		redis-server --bind "$HOST" --port "$port" --save "" --appendonly no \
		--daemonize no --dir "$dir" --repl-diskless-sync-delay 0 "$@"
}

pong() { [[ $(cli "$1" ping) == PONG ]]; }
info_is() { cli "$1" info "$2" | tr -d '\r' | grep -qx "$3"; }

# --- sentinel ----------------------------------------------------------------
sentinel_ready() {
	local port=$1
	[[ $(cli "$port" sentinel get-master-addr-by-name "$MASTER_NAME" | tr '\n' ' ') == "$HOST $MASTER_PORT " ]] &&
		[[ $(cli "$port" sentinel ckquorum "$MASTER_NAME") == "OK ${#SENTINEL_PORTS[@]} usable"* ]] &&
		cli "$port" sentinel replicas "$MASTER_NAME" | grep -qx "$HOST:$REPLICA_PORT"
}

run_sentinel() {
	# redis-server takes the config file first, then --sentinel.
	local sentinel=(redis-server) mode_flag=(--sentinel)
	if command -v redis-sentinel >/dev/null; then
		sentinel=(redis-sentinel) mode_flag=()
	fi

	for port in "$MASTER_PORT" "$REPLICA_PORT" "${SENTINEL_PORTS[@]}"; do
		! port_busy "$port" || die "port $port is already in use (another redis-ha.sh?)"
	done

	say "starting master :$MASTER_PORT and replica :$REPLICA_PORT"
	start_redis master "$MASTER_PORT"
	start_redis replica "$REPLICA_PORT" --replicaof "$HOST" "$MASTER_PORT"
	wait_until 10 "master :$MASTER_PORT answering" pong "$MASTER_PORT"
	wait_until 10 "replica :$REPLICA_PORT answering" pong "$REPLICA_PORT"
	wait_until 20 "replica :$REPLICA_PORT in sync" info_is "$REPLICA_PORT" replication master_link_status:up

	say "starting sentinels :${SENTINEL_PORTS[*]} (${sentinel[*]} ${mode_flag[*]})"
	for port in "${SENTINEL_PORTS[@]}"; do
		# The sentinel rewrites its config with what it learns.
		local conf="$TMPDIR/sentinel-$port.conf"
		cat >"$conf" <<-EOF
			port $port
			bind $HOST
			daemonize no
			dir $TMPDIR
			sentinel monitor $MASTER_NAME $HOST $MASTER_PORT 2
			sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
			sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS
			sentinel parallel-syncs $MASTER_NAME 1
		EOF
		start "sentinel :$port" "$TMPDIR/sentinel-$port.log" "${sentinel[@]}" "$conf" "${mode_flag[@]}"
	done
	# Sentinels find each other through hello messages two seconds apart;
	# without each other they cannot vote a failover.
	for port in "${SENTINEL_PORTS[@]}"; do
		wait_until 30 "sentinel :$port seeing the master, the replica and the other sentinels" sentinel_ready "$port"
	done

	say "ready:"
	printf '  master     %s:%s\n' "$HOST" "$MASTER_PORT"
	printf '  replica    %s:%s\n' "$HOST" "$REPLICA_PORT"
	local sentinels=()
	for port in "${SENTINEL_PORTS[@]}"; do
		sentinels+=("$HOST:$port")
	done
	printf '  sentinels  %s\n' "${sentinels[*]}"
	printf '\nThe Redis block of etc/chat-api.yaml:\n\n'
	printf 'Redis:\n  Mode: sentinel\n  MasterName: %s\n  SentinelAddrs:\n' "$MASTER_NAME"
	printf '    - %s\n' "${sentinels[@]}"
	printf '\nTry:\n'
	printf '  redis-cli -p %s sentinel get-master-addr-by-name %s\n' "${SENTINEL_PORTS[0]}" "$MASTER_NAME"
	printf '  redis-cli -p %s shutdown nosave    # kill the master: the sentinels promote the replica\n' "$MASTER_PORT"
	printf '  redis-cli -p %s sentinel failover %s    # or a failover without killing\n\n' "${SENTINEL_PORTS[0]}" "$MASTER_NAME"
}

# --- cluster -----------------------------------------------------------------
cluster_ok() {
	for port in "${CLUSTER_PORTS[@]}"; do
		cli "$port" cluster info | tr -d '\r' | grep -qx cluster_state:ok || return 1
	done
}

replicas_in_sync() {
	for port in "${CLUSTER_PORTS[@]}"; do
		local repl
		repl=$(cli "$port" info replication | tr -d '\r')
		grep -qx role:slave <<<"$repl" || continue
		grep -qx master_link_status:up <<<"$repl" || return 1
	done
}

run_cluster() {
	for port in "${CLUSTER_PORTS[@]}"; do
		for p in "$port" $((port + CLUSTER_BUS_OFFSET)); do
			! port_busy "$p" || die "port $p is already in use (another redis-ha.sh?)"
		done
	done

	say "starting cluster nodes :${CLUSTER_PORTS[*]}"
	for port in "${CLUSTER_PORTS[@]}"; do
		start_redis node "$port" --cluster-enabled yes \
			--cluster-config-file "$TMPDIR/nodes-$port.conf" \
			--cluster-node-timeout "$DOWN_AFTER_MS"
	done
	local addrs=()
	for port in "${CLUSTER_PORTS[@]}"; do
		wait_until 10 "node :$port answering" pong "$port"
		addrs+=("$HOST:$port")
	done

	say "joining them (redis-cli --cluster create, one replica per master)"
	LOGS+=("$TMPDIR/cluster-create.log")
	redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
		>"$TMPDIR/cluster-create.log" 2>&1 </dev/null || die "redis-cli --cluster create failed"
	wait_until 30 "cluster_state:ok on every node" cluster_ok
	wait_until 30 "every replica in sync" replicas_in_sync

	local masters=() replicas=()
	for port in "${CLUSTER_PORTS[@]}"; do
		if [[ $(cli "$port" role | head -n 1) == master ]]; then
			masters+=("$HOST:$port")
		else
			replicas+=("$HOST:$port")
		fi
	done

	say "ready:"
	printf '  masters   %s\n' "${masters[*]}"
	printf '  replicas  %s\n' "${replicas[*]}"
	printf '\nThe Redis block of etc/chat-api.yaml:\n\n'
	printf 'Redis:\n  Mode: cluster\n  Addrs:\n'
	printf '    - %s\n' "${addrs[@]}"
	printf '\nTry:\n'
	printf '  redis-cli -p %s cluster nodes\n' "${CLUSTER_PORTS[0]}"
	printf '  redis-cli -c -p %s    # follows MOVED redirections\n' "${CLUSTER_PORTS[0]}"
	printf '  redis-cli -p %s shutdown nosave    # kill a master: its replica takes over\n\n' "${masters[0]##*:}"
}

"run_$MODE"

say "Ctrl-C stops everything. Logs follow (from now on)."
set -m
tail -n 0 -F "${LOGS[@]}" &
TAIL_PID=$!
set +m

# Until a signal. A process that ends by itself (a master shut down to see
# a failover) is reported once; the rest keep running.
declare -A GONE=()
while :; do
	for i in "${!PIDS[@]}"; do
		[[ -n ${GONE[$i]:-} ]] && continue
		if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
			rc=0
			wait "${PIDS[$i]}" 2>/dev/null || rc=$?
			GONE[$i]=1
			say "${NAMES[$i]} exited (status $rc)"
		fi
	done
	((${#GONE[@]} < ${#PIDS[@]})) || die "every process has exited"
	sleep 1
done

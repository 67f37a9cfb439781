#!/usr/bin/env bash
# A local ethereal cluster without Docker: the topology of docker-compose.yml and deploy/k8s/.
#
#   scripts/cluster.sh up        PostgreSQL (throwaway initdb), a 3-master Redis Cluster, REPLICAS
#                                gateway replicas (WORKERS uvicorn workers each) and HAProxy in front
#   scripts/cluster.sh down      stop everything, delete the state directory
#   scripts/cluster.sh status    what runs, and HAProxy's view of the replicas
#   scripts/cluster.sh kill N    SIGKILL replica N (1-based): a crash
#   scripts/cluster.sh stop N    SIGTERM replica N: a graceful drain (healthz 503, grace, exit 0)
#   scripts/cluster.sh start N   start replica N again (after kill/stop)
#
# Environment: CLUSTER_DIR (default /tmp/ethereal-cluster), REPLICAS (2), WORKERS (1), PORT (HAProxy's
# port, default a free one), PYTHON (.venv/bin/python), ETHEREAL_UPSTREAM_URL + ETHEREAL_UPSTREAM_KEY
# (default: one simulated upstream, SIM_ARGS passed to it); any other ETHEREAL_* variable is passed to
# the replicas.
# After `up`, "$CLUSTER_DIR/env" holds ETHEREAL_URL, ETHEREAL_KEY (a minted key), ETHEREAL_ADMIN_KEY,
# DATABASE_URL, REDIS_URL and the replica ports: `. "$CLUSTER_DIR/env"`.
#
# HAProxy: leastconn (long streams spread by count, not by turn), health checks GET /healthz every
# second (a replica answering 503 while it drains is out after 2 checks, its streams go on),
# redispatch of requests whose connection failed, and `x-ethereal-replica` naming the replica that
# answered. Everything binds 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${CLUSTER_DIR:-/tmp/ethereal-cluster}
PY=${PYTHON:-$ROOT/.venv/bin/python}
REPLICAS=${REPLICAS:-2}
WORKERS=${WORKERS:-1}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# a Redis Cluster node also listens on port+10000 (the cluster bus): both must be free, port <= 55535
redis_port() { "$PY" -c '
import random, socket
while True:
    p = random.randint(20000, 55535)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
    except OSError:
        continue
    print(p); break'; }
pg_bin() { command -v "$1" 2>/dev/null || ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
wait_for() {  # wait_for SECONDS CMD...: until CMD succeeds
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || { echo "timed out waiting for: $*" >&2; return 1; }
    sleep 0.1
  done
}
healthy() { "$PY" -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1"; }

start_replica() {  # start_replica N
  local n=$1 port
  port=$(cat "$DIR/replica-$n.port")
  mkdir -p "$DIR/replica-$n"
  # shellcheck disable=SC1091
  ( set -a; . "$DIR/replica.env"; set +a
    ETHEREAL_DATA_DIR="$DIR/replica-$n" exec setsid "$PY" -m ethereal serve --host 127.0.0.1 --port "$port" \
      --workers "$WORKERS" >>"$DIR/replica-$n.log" 2>&1 ) &
  echo $! >"$DIR/replica-$n.pid"
  wait_for 60 healthy "http://127.0.0.1:$port/healthz" || { tail -n 30 "$DIR/replica-$n.log" >&2; return 1; }
}

replica_pid() { cat "$DIR/replica-$1.pid" 2>/dev/null || true; }

up() {
  if [ -f "$DIR/env" ]; then echo "a cluster is already up in $DIR (scripts/cluster.sh down first)" >&2; exit 1; fi
  command -v haproxy >/dev/null || { echo "haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }
  command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
  [ -n "$(pg_bin initdb)" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  mkdir -p "$DIR"; chmod 777 "$DIR"
  trap 'echo "cluster up failed: stopping what started" >&2; down >&2' ERR

  echo "== PostgreSQL"
  local pg_port; pg_port=$(free_port)
  mkdir -p "$DIR/pg"; chmod 777 "$DIR/pg"
  as_pg "$(pg_bin initdb)" -D "$DIR/pg/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  as_pg "$(pg_bin pg_ctl)" -D "$DIR/pg/data" -l "$DIR/pg/log" -w -t 60 -o \
    "-p $pg_port -k $DIR/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off" \
    start >/dev/null
  "$(pg_bin psql)" -h 127.0.0.1 -p "$pg_port" -U postgres -q -c 'CREATE DATABASE ethereal' >/dev/null
  local db_url="postgresql://postgres@127.0.0.1:$pg_port/ethereal"

  echo "== Redis Cluster (3 masters)"
  local nodes=() p
  for i in 1 2 3; do
    p=$(redis_port); mkdir -p "$DIR/redis-$i"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$DIR/redis-$i/nodes.conf" \
      --cluster-node-timeout 2000 --save "" --appendonly no --dir "$DIR/redis-$i" --daemonize yes \
      --pidfile "$DIR/redis-$i/pid" --logfile "$DIR/redis-$i/log" >/dev/null
    nodes+=("127.0.0.1:$p")
  done
  for i in 1 2 3; do
    wait_for 20 redis-cli -p "${nodes[$((i-1))]##*:}" ping || { tail -n 5 "$DIR/redis-$i/log" >&2; false; }
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$DIR/redis-create.log"
  wait_for 30 sh -c "redis-cli -p ${nodes[0]##*:} cluster info | grep -q cluster_state:ok"
  local redis_url
  if "$PY" -c 'import ethereal.redisconn' 2>/dev/null; then
    redis_url="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
  else
    # this checkout's limiter speaks to one Redis server only: give it one, say so
    p=$(free_port); mkdir -p "$DIR/redis-single"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR/redis-single" --daemonize yes \
      --pidfile "$DIR/redis-single/pid" --logfile "$DIR/redis-single/log" >/dev/null
    wait_for 20 redis-cli -p "$p" ping
    redis_url="redis://127.0.0.1:$p/0"
    echo "   (this gateway has no Redis Cluster support: replicas use a single Redis at $redis_url;"
    echo "    the cluster at ${nodes[*]} is up for tests)"
  fi

  local upstream_url=${ETHEREAL_UPSTREAM_URL:-} upstream_key=${ETHEREAL_UPSTREAM_KEY:-}
  if [ -z "$upstream_url" ]; then
    echo "== simulated upstream"
    p=$(free_port)
    # shellcheck disable=SC2086
    ( exec setsid "$PY" -m ethereal.sim --host 127.0.0.1 --port "$p" ${SIM_ARGS:-} >"$DIR/sim.log" 2>&1 ) &
    echo $! >"$DIR/sim.pid"
    wait_for 30 healthy "http://127.0.0.1:$p/"
    upstream_url="http://127.0.0.1:$p" upstream_key=sim-upstream-key
  fi

  local admin secret
  admin=$("$PY" -c 'import secrets; print("adm-" + secrets.token_urlsafe(24))')
  secret=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')
  cat >"$DIR/replica.env" <<EOF
ETHEREAL_DATABASE_URL=$db_url
ETHEREAL_REDIS_URL=$redis_url
ETHEREAL_ADMIN_KEY=$admin
ETHEREAL_SECRET_KEY=$secret
ETHEREAL_UPSTREAM_URL=$upstream_url
ETHEREAL_UPSTREAM_KEY=$upstream_key
ETHEREAL_DRAIN_DELAY=${ETHEREAL_DRAIN_DELAY:-3}
ETHEREAL_SHUTDOWN_GRACE=${ETHEREAL_SHUTDOWN_GRACE:-20}
PYTHONUNBUFFERED=1
EOF
  # any other ETHEREAL_* setting in this environment goes to the replicas too
  env | grep -E '^ETHEREAL_' | grep -vE '^ETHEREAL_(DATABASE_URL|REDIS_URL|ADMIN_KEY|SECRET_KEY|UPSTREAM_URL|UPSTREAM_KEY|DRAIN_DELAY|SHUTDOWN_GRACE|DATA_DIR)=' \
    >>"$DIR/replica.env" || true
  chmod 600 "$DIR/replica.env"

  echo "== migrations (once, as the Kubernetes Job does)"
  ( set -a; . "$DIR/replica.env"; set +a; "$PY" -m ethereal migrate )
  local key
  key=$(set -a; . "$DIR/replica.env"; set +a; "$PY" -m ethereal keys mint --name cluster --json |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["key"])')

  echo "== $REPLICAS gateway replica(s), $WORKERS worker(s) each"
  local servers="" ports=()
  for n in $(seq 1 "$REPLICAS"); do
    p=$(free_port); echo "$p" >"$DIR/replica-$n.port"; ports+=("$p")
    servers+="    server r$n 127.0.0.1:$p check"$'\n'
  done
  for n in $(seq 1 "$REPLICAS"); do start_replica "$n"; done

  echo "== HAProxy"
  local port=${PORT:-$(free_port)} hard maxconn
  # each proxied connection holds two descriptors: stay under the hard limit HAProxy may raise to
  hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=1048576
  maxconn=$(( hard / 2 - 100 )); [ "$maxconn" -gt 60000 ] && maxconn=60000
  cat >"$DIR/haproxy.cfg" <<EOF
global
    maxconn $maxconn
    stats socket $DIR/haproxy.sock mode 600 level admin

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 610s
    timeout server 610s
    timeout http-request 30s
    timeout http-keep-alive 60s
    # WebSockets (/v1/responses) pass through as tunnels: above the gateway's own idle close (600 s)
    timeout tunnel 660s
    timeout client-fin 30s
    timeout server-fin 30s
    # a request whose connection to a replica failed goes to another replica
    option redispatch
    retries 2
    retry-on conn-failure empty-response

frontend gateway
    bind 127.0.0.1:$port
    maxconn $maxconn
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr host ethereal
    http-check expect status 200
    # down after 2 failed checks (a draining replica answers 503); its open streams go on
    default-server inter 1s fastinter 500ms downinter 1s fall 2 rise 2 maxconn 20000
    http-response set-header x-ethereal-replica %s
$servers
EOF
  haproxy -c -q -f "$DIR/haproxy.cfg"
  haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid"
  wait_for 20 healthy "http://127.0.0.1:$port/healthz"

  cat >"$DIR/env" <<EOF
ETHEREAL_URL=http://127.0.0.1:$port
ETHEREAL_KEY=$key
ETHEREAL_ADMIN_KEY=$admin
DATABASE_URL=$db_url
REDIS_URL=$redis_url
REDIS_CLUSTER_NODES=$(IFS=,; echo "${nodes[*]}")
REPLICA_PORTS=$(IFS=,; echo "${ports[*]}")
CLUSTER_DIR=$DIR
EOF
  chmod 600 "$DIR/env"
  trap - ERR
  echo "cluster up: http://127.0.0.1:$port ($REPLICAS replicas). Settings: . $DIR/env"
}

stop_pidfile() {  # stop_pidfile FILE SIGNAL
  local pid; pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] && kill -"$2" "$pid" 2>/dev/null || true
}

down() {
  [ -d "$DIR" ] || { echo "no cluster in $DIR"; return 0; }
  stop_pidfile "$DIR/haproxy.pid" TERM
  for f in "$DIR"/replica-*.pid; do [ -e "$f" ] && stop_pidfile "$f" TERM; done
  for f in "$DIR"/replica-*.pid; do
    [ -e "$f" ] || continue
    local pid; pid=$(cat "$f"); local until=$((SECONDS + 40))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  stop_pidfile "$DIR/sim.pid" TERM
  for f in "$DIR"/redis-*/pid; do [ -e "$f" ] && stop_pidfile "$f" TERM; done
  if [ -d "$DIR/pg/data" ]; then as_pg "$(pg_bin pg_ctl)" -D "$DIR/pg/data" -m fast -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$DIR"
  echo "cluster down"
}

status() {
  [ -f "$DIR/env" ] || { echo "no cluster in $DIR"; return 1; }
  cat "$DIR/env" | grep -v KEY
  for f in "$DIR"/replica-*.pid; do
    local n=${f##*replica-}; n=${n%.pid}; local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then echo "replica $n: pid $pid, port $(cat "$DIR/replica-$n.port")"
    else echo "replica $n: not running"; fi
  done
  echo "show servers state replicas" | "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.read().encode())
print(s.makefile().read())' "$DIR/haproxy.sock" | awk 'NR>2 && NF {print "haproxy: " $4 " state=" $6 " (2=up 0=down)"}'
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill) kill -KILL -- "-$(replica_pid "$2")" 2>/dev/null || kill -KILL "$(replica_pid "$2")"; echo "replica $2 killed" ;;
  stop) kill -TERM "$(replica_pid "$2")"; echo "replica $2 draining" ;;
  start) start_replica "$2"; echo "replica $2 up" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac

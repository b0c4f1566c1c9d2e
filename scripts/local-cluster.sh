#!/usr/bin/env bash
# Starts or stops N Starling nodes on this host forming one cluster through a shared
# SQLite file (discovery_nodes table). Node 1 uses the default ports (unless
# PORT_OFFSET is set), so the admin CLI reaches it without options (`starling cets
# systemInfo`).
#
#   scripts/local-cluster.sh start DIR [N]   # default N=3
#   scripts/local-cluster.sh add DIR         # one more node (a fresh replacement, say)
#   scripts/local-cluster.sh stop DIR
#
# Node i (1-based): c2s 5222+STEP(i-1) (STARTTLS) and 5223+STEP(i-1) (TLS), admin
# 127.0.0.1:5551+(i-1), replication 127.0.0.1:5270+(i-1); STEP is PORT_STEP (default
# 1000; at least 2). Data, logs and configs in
# DIR/node<i>; the shared database is DIR/cluster.db; every node serves node 1's
# generated certificate (clients trust DIR/node1/ca.pem). CORES=n sets each node's
# executors (default: one per CPU); C2S_TLS the first listener's tls.mode (default
# starttls_required; `none` for plain-TCP load tests); PORT_OFFSET is added to every
# port (default 0; e.g. 40000 to run beside a node on the default ports); STARLING_BIN
# the binary (default: release build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${STARLING_BIN:-$root/target/release/starling}"
command="${1:-}"; dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR [N] | add DIR | stop DIR"; exit 2; }

start_node() {  # start_node I: writes DIR/node<I>/starling.toml and starts the node
  local i="$1" node="$dir/node$1" tls="" off="${PORT_OFFSET:-0}" step="${PORT_STEP:-1000}"
  mkdir -p "$node"
  if [ "$i" -gt 1 ]; then tls="certfile = \"$dir/node1/cert.pem\"
  keyfile = \"$dir/node1/key.pem\""; fi
  cat > "$node/starling.toml" <<TOML
[general]
  node_name = "node$i@localhost"
  data_dir = "$node"
  loglevel = "info"
  cores = ${CORES:-0}
[[listen.c2s]]
  port = $((off + 5222 + step * (i - 1)))
  ip_address = "127.0.0.1"
  tls.mode = "${C2S_TLS:-starttls_required}"
[[listen.c2s]]
  port = $((off + 5223 + step * (i - 1)))
  ip_address = "127.0.0.1"
  tls.mode = "tls"
[listen.admin]
  port = $((off + 5551 + i - 1))
[auth]
  $tls
[outgoing_pools.rdbms.default.connection]
  driver = "sqlite"
  database = "$dir/cluster.db"
[internal_databases.cets]
  cluster_name = "local"
  secret = "$(cat "$dir/secret")"
  listen = "127.0.0.1:$((off + 5270 + i - 1))"
TOML
  "$bin" serve --config "$node/starling.toml" >>"$node/server.log" 2>&1 &
  echo $! > "$node/pid"
  if [ "$i" -eq 1 ]; then
    for _ in $(seq 1 100); do [ -f "$node/cert.pem" ] && break; sleep 0.1; done
    [ -f "$node/cert.pem" ] || { echo "node1 did not start:"; tail -3 "$node/server.log"; exit 1; }
  fi
  echo "node$i@localhost: pid $(cat "$node/pid"), c2s $((off + 5222 + step * (i - 1))), admin $((off + 5551 + i - 1)), log $node/server.log"
}

case "$command" in
start)
  count="${3:-3}"
  [ -x "$bin" ] || cargo build --release -p starling-server --bin starling --manifest-path "$root/Cargo.toml"
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  [ -f "$dir/secret" ] || head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/secret"
  for i in $(seq 1 "$count"); do start_node "$i"; done
  echo "check: $bin --config $dir/node1/starling.toml cets systemInfo"
  ;;
add)
  dir="$(cd "$dir" && pwd)"
  [ -f "$dir/secret" ] || { echo "no cluster in $dir (start it first)"; exit 2; }
  i=1
  while [ -d "$dir/node$i" ]; do i=$((i + 1)); done
  start_node "$i"
  ;;
stop)
  for pidfile in "$dir"/node*/pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; fi
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    rm -f "$pidfile"
  done
  echo "stopped"
  ;;
*) echo "usage: $0 start DIR [N] | add DIR | stop DIR"; exit 2 ;;
esac

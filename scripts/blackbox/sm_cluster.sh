#!/usr/bin/env bash
# Black-box test: XEP-0198 resumption on ANOTHER node. Two `starling serve`
# processes form a cluster on one SQLite file (the second uses the first's
# generated certificate); slixmpp's xep_0198 (scripts/blackbox/sm.py) enables
# resumption on node 1, its socket is aborted while bob writes, and it resumes on
# node 2: every message arrives once, in order.
# Usage: scripts/blackbox/sm_cluster.sh PYTHON   (after cargo build; PYTHON has slixmpp)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/debug/starling"
python="${1:-$root/target/pyvenv/bin/python}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
read -r c1 c2 a1 a2 r1 r2 < <("$python" - <<'PY'
import socket
sockets = [socket.socket() for _ in range(6)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in sockets])
PY
)
config() {  # config N C2S ADMIN CETS [CERT]
  cat <<TOML
[general]
  node_name = "sm$1@localhost"
  data_dir = "$work/data$1"
  cores = 2
[[listen.c2s]]
  port = $2
  ip_address = "127.0.0.1"
  tls.mode = "starttls_required"
[listen.admin]
  port = $3
[outgoing_pools.rdbms.default.connection]
  driver = "sqlite"
  database = "$work/shared.db"
[internal_databases.cets]
  cluster_name = "blackbox"
  secret = "sesame"
  listen = "127.0.0.1:$4"
  discovery_interval = 1
TOML
  if [ -n "${5:-}" ]; then printf '[auth]\n  certfile = "%s/cert.pem"\n  keyfile = "%s/key.pem"\n' "$5" "$5"; fi
}
up() { for _ in $(seq 1 150); do "$bin" --config "$1" server status >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
config 1 "$c1" "$a1" "$r1" > "$work/n1.toml"
"$bin" serve --config "$work/n1.toml" >"$work/n1.log" 2>&1 & pids+=($!)
up "$work/n1.toml"
config 2 "$c2" "$a2" "$r2" "$work/data1" > "$work/n2.toml"
"$bin" serve --config "$work/n2.toml" >"$work/n2.log" 2>&1 & pids+=($!)
up "$work/n2.toml"
for user in alice bob; do
  "$bin" --config "$work/n1.toml" account registerUser --username "$user" --domain localhost --password secret >/dev/null
done
# Both nodes list each other (the cluster formed) before the test starts.
for _ in $(seq 1 100); do
  joined=$("$bin" --config "$work/n2.toml" cets systemInfo 2>/dev/null | grep -o '"sm1@localhost"' | wc -l || true)
  [ "${joined:-0}" -ge 2 ] && break
  sleep 0.2
done
status=0
timeout 90 "$python" "$root/scripts/blackbox/sm.py" 127.0.0.1 "$c1" "$work/data1/ca.pem" 127.0.0.1 "$c2" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- node 1 log ---"; tail -30 "$work/n1.log"; echo "--- node 2 log ---"; tail -30 "$work/n2.log"
fi
exit "$status"

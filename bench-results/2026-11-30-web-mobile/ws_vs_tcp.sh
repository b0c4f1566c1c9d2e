#!/usr/bin/env bash
# Messages/s over WebSocket against TCP, one Starling process serving both (server on
# CPU 0 with one core, load generator on CPU 1, plain loopback, shapers lifted, every
# module but mod_mam so the archive's SQLite inserts do not bound it), the same
# closed-loop throughput profile run over each transport in turn.
# Usage: ws_vs_tcp.sh USERS SECONDS   (after cargo build --release -p starling-server -p starling-loadgen)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(cd "$(dirname "$0")" && pwd)"
bin="$root/target/release"
users="${1:-2000}"; seconds="${2:-30}"
work="$(mktemp -d)"
ulimit -n "$(ulimit -Hn)"
cleanup() { pkill -f "starling serve --config $work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/starling.toml" <<TOML
[general]
  data_dir = "$work/data"
  cores = 1
[[listen.c2s]]
  port = 5222
  ip_address = "127.0.0.1"
  tls.mode = "none"
  shaper = "none"
[[listen.http]]
  port = 5280
  ip_address = "127.0.0.1"
  tls.mode = "none"
  shaper = "none"
[listen.admin]
  port = 5551
[limits]
  pre_auth_timeout_seconds = 60
  account_stanza_shaper = "none"
  connections_per_address_max = 0
TOML
# Every module but mod_mam (the example's list without it).
sed -n '/^\[modules.mod_roster\]/,/^# XEP-0077/p' "$root/server/starling.example.toml" | grep -v '^# XEP-0077' \
  | awk '/^\[modules.mod_mam/{skip=1} /^\[modules\./ && !/^\[modules.mod_mam/{skip=0} !skip' >> "$work/starling.toml"
taskset -c 0 "$bin/starling" serve --config "$work/starling.toml" >"$work/starling.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do "$bin/starling" --config "$work/starling.toml" server status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/starling-loadgen" accounts --users "$users" --out "$work/users.csv"
"$bin/starling" --config "$work/starling.toml" account importUsers --filename "$work/users.csv" >/dev/null
for transport in tcp websocket; do
  port=5222; [ "$transport" = websocket ] && port=5280
  taskset -c 1 "$bin/starling-loadgen" run --profile throughput --users "$users" --duration "$seconds" \
    --target "127.0.0.1:$port" --transport "$transport" --server-pid "$pid" --name "throughput-$transport" \
    --out "$out/throughput-$transport" >"$work/$transport.log" 2>&1
  python3 - "$out/throughput-$transport/result.json" "$transport" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["summary"]
print(f"{sys.argv[2]}: delivered/s {s['delivered_rate']:.0f}, sent {s['sent']}, lost {s['lost']}, "
      f"server CPU per delivered message {s['server_cpu_us_per_delivered']:.2f} us")
PY
done

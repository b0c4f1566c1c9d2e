#!/usr/bin/env bash
# Messages/s over TCP and over WebSocket (RFC 7395) for Starling, ejabberd 23.01 and
# Prosody 0.12 in one run: the closed-loop `throughput` profile, each server alone on
# CPU 0 with the load generator on CPU 1, plain loopback, shapers and limits lifted.
# Starling runs every module but mod_mam (neither peer archives in its load-test
# configuration). The peers are ../shared/peers' load-test instances with one change,
# made in a copy of that folder: a WebSocket listener (ejabberd: ejabberd_http with
# ejabberd_http_ws at /ws on 5280; Prosody: mod_websocket at /xmpp-websocket, http
# port 5280, consider_websocket_secure for PLAIN on ws://).
# Usage: ws_peers.sh USERS SECONDS   (as root, after ../shared/peers/install.sh and
#        cargo build --release -p starling-server -p starling-loadgen)
# Environment: SERVERS (default "starling ejabberd prosody"), OUT (default: this folder).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$(cd "$(dirname "$0")" && pwd)}"
servers="${SERVERS:-starling ejabberd prosody}"
bin="$root/target/release"
users="${1:-2000}"; seconds="${2:-30}"
work="$(mktemp -d)"
chmod 755 "$work"  # the peers run as their own users under it
export RUN_DIR="$work/peers-run"
ulimit -n "$(ulimit -Hn)"
peers="$work/peers"
cp -r "$root/../shared/peers" "$peers"
cleanup() {
  "$peers/stop_all.sh" >/dev/null 2>&1 || true
  pkill -f "starling serve --config $work" 2>/dev/null || true
}
trap cleanup EXIT

# ejabberd: an HTTP listener with the WebSocket handler, after the c2s listener.
python3 - "$peers/ejabberd/ejabberd.yml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
marker = "  # LOADTEST: removed listeners"
listener = """  -
    # WS-BENCH: XMPP over WebSocket for the transport comparison.
    port: 5280
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /ws: ejabberd_http_ws
"""
assert marker in text
open(path, "w").write(text.replace(marker, listener + marker, 1))
PY
# Prosody: mod_websocket on the HTTP port.
python3 - "$peers/prosody/prosody.cfg.lua" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
text = text.replace('modules_enabled = {', 'modules_enabled = {\n\t"websocket"; -- WS-BENCH', 1)
text = text.replace('http_ports = { }', 'http_ports = { 5280 } -- WS-BENCH\nconsider_websocket_secure = true -- WS-BENCH', 1)
open(path, "w").write(text)
PY

result() {  # result LABEL DIR
  python3 - "$2/result.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["summary"]
print(f"{sys.argv[2]}: delivered/s {s['delivered_rate']:.0f}, sent {s['sent']}, lost {s['lost']}, "
      f"server CPU per delivered message {s['server_cpu_us_per_delivered']:.2f} us")
PY
}

run() {  # run LABEL TARGET TRANSPORT WS_PATH PID AUTH
  taskset -c 1 "$bin/starling-loadgen" run --profile throughput --users "$users" --duration "$seconds" \
    --target "$2" --transport "$3" --ws-path "$4" --server-pid "$5" --auth "$6" --name "$1" \
    --out "$out/$1" >"$work/$1.log" 2>&1 || { cat "$work/$1.log"; return 1; }
  result "$1" "$out/$1"
}

# Starling.
if [[ " $servers " == *" starling "* ]]; then
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
sed -n '/^\[modules.mod_roster\]/,/^# XEP-0077/p' "$root/server/starling.example.toml" | grep -v '^# XEP-0077' \
  | awk '/^\[modules.mod_mam/{skip=1} /^\[modules\./ && !/^\[modules.mod_mam/{skip=0} !skip' >> "$work/starling.toml"
taskset -c 0 "$bin/starling" serve --config "$work/starling.toml" >"$work/starling.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do "$bin/starling" --config "$work/starling.toml" server status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/starling-loadgen" accounts --users "$users" --out "$work/users.csv"
"$bin/starling" --config "$work/starling.toml" account importUsers --filename "$work/users.csv" >/dev/null
run starling-tcp 127.0.0.1:5222 tcp /ws-xmpp "$pid" scram
run starling-websocket 127.0.0.1:5280 websocket /ws-xmpp "$pid" scram
kill -TERM "$pid"; wait "$pid" || true
fi

# ejabberd.
if [[ " $servers " == *" ejabberd "* ]]; then
"$peers/start_ejabberd.sh" --fresh >/dev/null
"$peers/register_users.sh" ejabberd "$users" >/dev/null 2>&1
pid="$(cat "$RUN_DIR/ejabberd/log/ejabberd.pid")"
run ejabberd-tcp 127.0.0.1:5222 tcp /ws "$pid" plain
run ejabberd-websocket 127.0.0.1:5280 websocket /ws "$pid" plain
"$peers/stop_ejabberd.sh" >/dev/null 2>&1 || true
fi

# Prosody.
if [[ " $servers " == *" prosody "* ]]; then
"$peers/start_prosody.sh" --fresh >/dev/null
"$peers/register_users.sh" prosody "$users" >/dev/null 2>&1
pid="$(cat "$RUN_DIR/prosody/server.pid")"
run prosody-tcp 127.0.0.1:5223 tcp /xmpp-websocket "$pid" plain
run prosody-websocket 127.0.0.1:5280 websocket /xmpp-websocket "$pid" plain
"$peers/stop_prosody.sh" >/dev/null 2>&1 || true
fi

#!/usr/bin/env bash
# Black-box test: start a real `starling serve` process (STARTTLS and direct TLS on
# free loopback ports, generated certificate), register two accounts with the admin
# CLI, and run real third-party clients (slixmpp) against it. Then stop it with
# SIGTERM and check it exits cleanly.
# Usage: scripts/blackbox/run.sh   (after `cargo build`; uses target/pyvenv)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/debug/starling"
python="$root/target/pyvenv/bin/python"
work="$(mktemp -d)"
server_pid=""
page_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -9 "$server_pid" 2>/dev/null || true; fi
  if [ -n "$page_pid" ]; then kill "$page_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

read -r starttls_port direct_port admin_port ws_port wss_port page_port < <("$python" - <<'PY'
import socket
ports = []
sockets = []
for _ in range(6):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s.getsockname()[1]); sockets.append(s)
print(*ports)
PY
)
cat > "$work/starling.toml" <<TOML
[general]
  data_dir = "$work/data"
  cores = 2
[[listen.c2s]]
  port = $starttls_port
  ip_address = "127.0.0.1"
  tls.mode = "starttls_required"
[[listen.c2s]]
  port = $direct_port
  ip_address = "127.0.0.1"
  tls.mode = "tls"
[[listen.http]]
  port = $ws_port
  ip_address = "127.0.0.1"
  [[listen.http.handlers.mod_websockets]]
    path = "/ws-xmpp"
  [[listen.http.handlers.mod_bosh]]
    path = "/http-bind"
[[listen.http]]
  port = $wss_port
  ip_address = "127.0.0.1"
  tls.mode = "tls"
  [[listen.http.handlers.mod_websockets]]
    path = "/ws-xmpp"
[listen.admin]
  port = $admin_port
TOML
# Every module (the example config's [modules] section), plus in-band registration.
sed -n '/^\[modules.mod_roster\]/,/^# XEP-0077/p' "$root/server/starling.example.toml" | grep -v '^# XEP-0077' >> "$work/starling.toml"
printf '[modules.mod_register]\n  registration_timeout = 0\n' >> "$work/starling.toml"

"$bin" serve --config "$work/starling.toml" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if "$bin" --config "$work/starling.toml" server status >/dev/null 2>&1; then break; fi
  sleep 0.1
done
for user in alice bob carol; do
  "$bin" --config "$work/starling.toml" account registerUser --username "$user" --domain localhost --password secret >/dev/null
done

status=0
for test in chat im; do
  if [ "$status" -eq 0 ]; then
    timeout 90 "$python" "$root/scripts/blackbox/$test.py" 127.0.0.1 "$starttls_port" "$direct_port" "$work/data/ca.pem" || status=$?
  fi
done
# XEP-0198: a killed socket, resumed (slixmpp 1.17's xep_0198).
if [ "$status" -eq 0 ]; then
  timeout 90 "$python" "$root/scripts/blackbox/sm.py" 127.0.0.1 "$starttls_port" "$work/data/ca.pem" || status=$?
fi
# Debian 12's packaged slixmpp 1.8.3 (the library inside poezio), with the system
# Python: it tries SCRAM-*-PLUS with tls-unique first (issue 9).
if [ "$status" -eq 0 ]; then
  echo "--- Debian python3-slixmpp $(/usr/bin/python3 -c 'import slixmpp; print(slixmpp.__version__)') ---"
  DEBIAN_SLIXMPP=1 timeout 90 /usr/bin/python3 "$root/scripts/blackbox/chat.py" 127.0.0.1 "$starttls_port" "$direct_port" "$work/data/ca.pem" || status=$?
fi
if [ "$status" -eq 0 ]; then
  timeout 90 /usr/bin/python3 "$root/scripts/blackbox/sm.py" 127.0.0.1 "$starttls_port" "$work/data/ca.pem" || status=$?
fi
# XEP-0198 resumption on another node of a two-node cluster, with both slixmpps.
if [ "$status" -eq 0 ]; then
  timeout 120 "$root/scripts/blackbox/sm_cluster.sh" "$python" || status=$?
fi
if [ "$status" -eq 0 ]; then
  DEBIAN_SLIXMPP=1 timeout 120 "$root/scripts/blackbox/sm_cluster.sh" /usr/bin/python3 || status=$?
fi
if [ "$status" -eq 0 ]; then
  timeout 120 "$root/scripts/blackbox/poezio.sh" 127.0.0.1 "$starttls_port" "$work/data/ca.pem" "$bin" "$work/starling.toml" || status=$?
fi

# xmpp.js 0.14 (npm) over WebSocket, plain and TLS, chatting with a TCP client.
if [ "$status" -eq 0 ]; then
  echo "--- xmpp.js $(node -p 'require("'"$root"'/target/npm/node_modules/@xmpp/client/package.json").version') ---"
  cp "$root/scripts/blackbox/js/"*.mjs "$root/scripts/blackbox/js/"*.html "$root/target/npm/"
  NODE_EXTRA_CA_CERTS="$work/data/ca.pem" timeout 90 node --experimental-websocket --no-warnings \
    "$root/target/npm/xmppjs.mjs" "ws://127.0.0.1:$ws_port/ws-xmpp" "wss://localhost:$wss_port/ws-xmpp" "$starttls_port" \
    || status=$?
fi
# strophe.js and StanzaJS (npm) over WebSocket, StanzaJS with stream management.
if [ "$status" -eq 0 ]; then
  timeout 90 node --experimental-websocket --no-warnings "$root/target/npm/webclients.mjs" "ws://127.0.0.1:$ws_port/ws-xmpp" \
    "http://127.0.0.1:$ws_port/http-bind" || status=$?
fi
# converse.js 14 in Debian's headless Chromium (playwright-core) over WebSocket, then
# over BOSH; the page is served from target/npm; the screenshots are kept in target/.
if [ "$status" -eq 0 ]; then
  (cd "$root/target/npm" && exec "$python" -m http.server "$page_port" --bind 127.0.0.1 >/dev/null 2>&1) &
  page_pid=$!
  NODE_EXTRA_CA_CERTS="$work/data/ca.pem" timeout 150 node --experimental-websocket --no-warnings \
    "$root/target/npm/converse.mjs" "$page_port" "ws://127.0.0.1:$ws_port/ws-xmpp" "$starttls_port" \
    "$root/target/blackbox-converse.png" >"$work/converse.log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    NODE_EXTRA_CA_CERTS="$work/data/ca.pem" timeout 150 node --experimental-websocket --no-warnings \
      "$root/target/npm/converse.mjs" "$page_port" "http://127.0.0.1:$ws_port/http-bind" "$starttls_port" \
      "$root/target/blackbox-converse-bosh.png" >>"$work/converse.log" 2>&1 || status=$?
  fi
  # The page asks for converse.js's web fonts and avatars on the internet: not here.
  grep -v ERR_NAME_NOT_RESOLVED "$work/converse.log" || true
fi

kill -TERM "$server_pid"
for _ in $(seq 1 100); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
  echo "FAILED: the server did not stop within 10 s of SIGTERM"; status=1
else
  wait "$server_pid" || { echo "FAILED: the server exited with $? after SIGTERM"; status=1; }
fi
server_pid=""
if [ "$status" -ne 0 ]; then
  echo "--- server log ---"; cat "$work/server.log"
fi
exit "$status"

#!/usr/bin/env bash
# Memory per parked XEP-0198 session: N users connect with resumable stream
# management and stay idle; the server's RSS is read; then every load generator
# process is killed (no </stream:stream>: every session parks) and the RSS is read
# again once the sockets are gone. Server on CPU 0, one core, loopback.
# Usage: parked.sh USERS   (after cargo build --release -p starling-server -p starling-loadgen)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/release"
users="${1:-10000}"
work="$(mktemp -d)"
ulimit -n "$(ulimit -Hn)"
cleanup() { pkill -f "starling serve --config $work" 2>/dev/null || true; pkill -f "starling-loadgen run --profile connect --users $users" 2>/dev/null || true; rm -rf "$work"; }
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
[listen.admin]
  port = 5551
[limits]
  pre_auth_timeout_seconds = 60
  account_stanza_shaper = "none"
  connections_per_address_max = 0
TOML
taskset -c 0 "$bin/starling" serve --config "$work/starling.toml" >"$work/starling.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do "$bin/starling" --config "$work/starling.toml" server status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/starling-loadgen" accounts --users "$users" --out "$work/users.csv"
"$bin/starling" --config "$work/starling.toml" account importUsers --filename "$work/users.csv" >/dev/null
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$pid/status"; }
sleep 1
base=$(rss)
taskset -c 1 "$bin/starling-loadgen" run --profile connect --users "$users" --duration 120 --rate 1000 \
  --target 127.0.0.1:5222 --sm --out "$work/run" >"$work/loadgen.log" 2>&1 &
lg=$!
for _ in $(seq 1 90); do
  n=$(curl -s http://127.0.0.1:5551/metrics 2>/dev/null | awk '/^starling_sessions / {print $2}')
  [ "${n:-0}" -ge "$users" ] && break
  sleep 1
done
sleep 3
connected=$(rss)
echo "sessions: $n; RSS before: $base B; with $users idle SM sessions: $connected B"
pkill -9 -f "starling-loadgen" || true
wait "$lg" 2>/dev/null || true
sleep 5
parked=$(rss)
left=$(curl -s http://127.0.0.1:5551/metrics | awk '/^starling_sessions / {print $2}')
echo "after killing every client: sessions still bound (parked): $left; RSS: $parked B"
echo "per idle SM session: $(( (connected - base) / users )) B; per parked session: $(( (parked - base) / users )) B"
grep -o 'starling_sm_parked_total [0-9]*' <(curl -s http://127.0.0.1:5551/metrics) || true

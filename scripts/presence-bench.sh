#!/usr/bin/env bash
# Presence fan-out at login: builds rosters on Starling, ejabberd 23.01 and Prosody 0.12
# through XMPP (`--profile roster-setup`, every pair subscribed both ways), then runs a
# login storm with those rosters and reports logins/s, presence stanzas received/s and
# server memory per session, one server after the other, in one comparison report.
# Servers are pinned to CPU 0, the load generator to CPU 1; plain TCP on loopback.
#
# Usage: scripts/presence-bench.sh NAME PROFILE USERS ROSTER SPREAD DURATION [extra loadgen args...]
#   ejabberd's 2M test, roster of 18, all online:
#     scripts/presence-bench.sh presence-ejabberd-2m ejabberd-2m 2000 18 1 40
#   Tigase's 1M test, roster of 150 with 30 online (5 accounts per online user):
#     scripts/presence-bench.sh presence-tigase-1m tigase-1m 400 150 5 40
# Environment: RATE (login rate of the measured storm, all servers; default the
# profile's), SETUP_RATE (logins/s while building rosters, default 150), SETUP_SECONDS
# (default 120), SERVERS (default "starling ejabberd prosody"), OUT.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$(cd "$root/../shared/peers" && pwd)"
name="$1"; profile="$2"; users="$3"; roster="$4"; spread="$5"; duration="$6"; shift 6
extra=("$@")
accounts=$((users * spread))
out="${OUT:-$root/bench-results/$(date -u +%F)-$name}"
servers="${SERVERS:-starling ejabberd prosody}"
bin="$root/target/release"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
cargo build --release -p starling-server -p starling-loadgen --manifest-path "$root/Cargo.toml" >/dev/null
work="$(mktemp -d)"
cleanup() { pkill -f "starling serve --config $work" 2>/dev/null || true; }
trap cleanup EXIT

loadgen() {  # loadgen LABEL TARGET PID AUTH OUTDIR PROFILE USERS SPREAD RATE SECONDS
  local label="$1" target="$2" pid="$3" auth="$4" dir="$5" prof="$6" count="$7" spr="$8" rate="$9" seconds="${10}"
  # shellcheck disable=SC2046
  taskset -c 1 "$bin/starling-loadgen" run --profile "$prof" --users "$count" --roster "$roster" \
    --roster-spread "$spr" --duration "$seconds" --target "$target" --auth "$auth" --server-pid "$pid" \
    --name "$label" --out "$dir" $( [ -n "$rate" ] && echo "--rate $rate" ) "${extra[@]}"
}

setup() {  # setup LABEL TARGET PID AUTH: build every roster through XMPP
  local label="$1" target="$2" pid="$3" auth="$4"
  echo "=== $label: roster-setup, $accounts accounts, roster $roster ==="
  loadgen "$label" "$target" "$pid" "$auth" "$work/setup-$label" roster-setup "$accounts" 1 \
    "${SETUP_RATE:-150}" "${SETUP_SECONDS:-120}"
  grep -E "rosters completed|logins/s" "$work/setup-$label/README.md" || true
  cp "$work/setup-$label/README.md" "$out/setup-$label.md"
}

storm() {  # storm LABEL TARGET PID AUTH: the measured login storm (server restarted first)
  local label="$1" target="$2" pid="$3" auth="$4"
  echo "=== $label: $profile, $users users (roster $roster, spread $spread), ${duration}s ==="
  loadgen "$label" "$target" "$pid" "$auth" "$out/$label" "$profile" "$users" "$spread" "${RATE:-}" "$duration"
}

start_starling() {
  taskset -c 0 "$bin/starling" serve --config "$work/starling.toml" >>"$work/starling.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do "$bin/starling" --config "$work/starling.toml" server status >/dev/null 2>&1 && break; sleep 0.1; done
}

start_peer() {  # start_peer ejabberd|prosody [--fresh]
  "$peers/start_$1.sh" ${2:-}
  case "$1" in
  ejabberd) pid="$(cat "${RUN_DIR:-/tmp/peers-run}/ejabberd/log/ejabberd.pid")" ;;
  prosody) pid="$(cat "${RUN_DIR:-/tmp/peers-run}/prosody/server.pid")" ;;
  esac
  taskset -a -cp 0 "$pid" >/dev/null   # every thread on CPU 0, like the others
}

# Each server builds its rosters, is restarted (so memory per session is measured
# from a fresh process, rosters read back from its storage), then takes the storm.
for server in $servers; do
  case "$server" in
  starling)
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
  # Benchmarks lift the abuse limits (README "Shapers, throttles and limits").
  account_stanza_shaper = "none"
  connections_per_address_max = 0
TOML
    start_starling
    "$bin/starling-loadgen" accounts --users "$accounts" --out "$work/users.csv"
    "$bin/starling" --config "$work/starling.toml" account importUsers --filename "$work/users.csv" >/dev/null
    setup starling 127.0.0.1:5222 "$pid" scram
    kill -TERM "$pid"; wait "$pid" || true
    start_starling
    storm starling 127.0.0.1:5222 "$pid" scram
    kill -TERM "$pid"; wait "$pid" || true
    ;;
  ejabberd|prosody)
    other=prosody; port=5222
    if [ "$server" = prosody ]; then other=ejabberd; port=5223; fi
    "$peers/stop_$other.sh" >/dev/null 2>&1 || true
    start_peer "$server" --fresh
    "$peers/register_users.sh" "$server" "$accounts" >/dev/null
    setup "$server" "127.0.0.1:$port" "$pid" plain
    "$peers/stop_$server.sh" >/dev/null 2>&1 || true
    sleep 2
    start_peer "$server"
    storm "$server" "127.0.0.1:$port" "$pid" plain
    "$peers/stop_$server.sh" >/dev/null 2>&1 || true
    ;;
  esac
done
"$peers/stop_all.sh" >/dev/null 2>&1 || true
runs=()
for server in $servers; do runs+=("$out/$server"); done
"$bin/starling-loadgen" compare --out "$out" "${runs[@]}"
echo "report: $out/comparison.md"

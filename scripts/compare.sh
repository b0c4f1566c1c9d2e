#!/usr/bin/env bash
# Runs one load profile against Starling, ejabberd 23.01, Prosody 0.12 and the
# loadgen's `limit` reference server, one after the other on loopback, and writes
# one comparison report. Servers are pinned to CPU 0, the load generator to CPU 1.
#
# Usage: scripts/compare.sh NAME PROFILE USERS DURATION [extra loadgen args...]
#   e.g. scripts/compare.sh connect connect 19500 60
# Environment: STARLING_RATE, EJABBERD_RATE, PROSODY_RATE, LIMIT_RATE (logins/s per
# server; default: the profile's), SERVERS (default "starling ejabberd prosody limit"),
# STARLING_AUTH (default scram), STARLING_TLS (none, default, or starttls: the
# listener requires STARTTLS and the load generator uses it), STARLING_MODULES (TOML
# appended to Starling's config, e.g. a [modules] list without mod_mam),
# STARLING_BIN (a starling binary to measure instead of target/release's, e.g. an
# older build for a before/after run), OUT (default bench-results/<date>-NAME).
# Peers come from ../shared/peers (installed with its install.sh, as root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$(cd "$root/../shared/peers" && pwd)"
name="$1"; profile="$2"; users="$3"; duration="$4"; shift 4
extra=("$@")
out="${OUT:-$root/bench-results/$(date -u +%F)-$name}"
servers="${SERVERS:-starling ejabberd prosody limit}"
bin="$root/target/release"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
cargo build --release -p starling-server -p starling-loadgen --manifest-path "$root/Cargo.toml" >/dev/null
work="$(mktemp -d)"
cleanup() { pkill -f "starling serve --config $work" 2>/dev/null || true; pkill -f "starling-loadgen limit" 2>/dev/null || true; }
trap cleanup EXIT

rate_arg() { if [ -n "${1:-}" ]; then echo "--rate $1"; fi; }

run_loadgen() {  # run_loadgen LABEL TARGET PID AUTH RATE
  local label="$1" target="$2" pid="$3" auth="$4" rate="$5"
  echo "=== $label: $profile, $users users, ${duration}s ==="
  # shellcheck disable=SC2046
  taskset -c 1 "$bin/starling-loadgen" run --profile "$profile" --users "$users" --duration "$duration" \
    --target "$target" --auth "$auth" --server-pid "$pid" --name "$label" --out "$out/$label" \
    $(rate_arg "$rate") "${extra[@]}" ${server_args:-}
}

for server in $servers; do
  case "$server" in
  starling)
    listener_tls="none"; server_args=""
    if [ "${STARLING_TLS:-none}" = "starttls" ]; then listener_tls="starttls_required"; server_args="--tls starttls"; fi
    starling_bin="${STARLING_BIN:-$bin/starling}"
    rm -rf "$work/data"
    cat > "$work/starling.toml" <<TOML
[general]
  data_dir = "$work/data"
  cores = 1
[[listen.c2s]]
  port = 5222
  ip_address = "127.0.0.1"
  tls.mode = "$listener_tls"
  shaper = "none"
[listen.admin]
  port = 5551
[limits]
  pre_auth_timeout_seconds = 60
  # Benchmarks lift the abuse limits (README "Shapers, throttles and limits").
  account_stanza_shaper = "none"
  connections_per_address_max = 0
${STARLING_MODULES:-}
TOML
    taskset -c 0 "$starling_bin" serve --config "$work/starling.toml" >"$work/starling.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do "$starling_bin" --config "$work/starling.toml" server status >/dev/null 2>&1 && break; sleep 0.1; done
    if [ ! -f "$work/users-$users.csv" ]; then
      "$bin/starling-loadgen" accounts --users "$users" --out "$work/users-$users.csv"
    fi
    "$starling_bin" --config "$work/starling.toml" account importUsers --filename "$work/users-$users.csv" >/dev/null
    run_loadgen starling 127.0.0.1:5222 "$pid" "${STARLING_AUTH:-scram}" "${STARLING_RATE:-}"
    server_args=""
    # Let the archive writer finish, then stop and count its rows (both sides of each
    # message with a body): nothing acknowledged may be missing.
    sleep 2
    kill -TERM "$pid"; wait "$pid" || true
    if [ -f "$work/data/starling.db" ] && command -v sqlite3 >/dev/null; then
      sqlite3 "$work/data/starling.db" "SELECT COUNT(*) FROM mam_message" > "$out/starling/archived-rows.txt" 2>/dev/null || true
    fi
    ;;
  ejabberd)
    "$peers/stop_prosody.sh" >/dev/null 2>&1 || true
    "$peers/start_ejabberd.sh" --fresh
    "$peers/register_users.sh" ejabberd "$users" >/dev/null
    # shellcheck disable=SC1091
    pid="$(cat "${RUN_DIR:-/tmp/peers-run}/ejabberd/log/ejabberd.pid")"
    taskset -a -cp 0 "$pid" >/dev/null   # every BEAM thread on CPU 0, like the others
    run_loadgen ejabberd 127.0.0.1:5222 "$pid" plain "${EJABBERD_RATE:-}"
    "$peers/stop_ejabberd.sh" >/dev/null 2>&1 || true
    ;;
  prosody)
    "$peers/stop_ejabberd.sh" >/dev/null 2>&1 || true
    "$peers/start_prosody.sh" --fresh
    "$peers/register_users.sh" prosody "$users" >/dev/null
    pid="$(cat "${RUN_DIR:-/tmp/peers-run}/prosody/server.pid")"
    taskset -a -cp 0 "$pid" >/dev/null
    run_loadgen prosody 127.0.0.1:5223 "$pid" plain "${PROSODY_RATE:-}"
    "$peers/stop_prosody.sh" >/dev/null 2>&1 || true
    ;;
  limit)
    taskset -c 0 "$bin/starling-loadgen" limit --listen 127.0.0.1:5299 >"$work/limit.log" 2>&1 &
    pid=$!
    sleep 0.5
    run_loadgen limit 127.0.0.1:5299 "$pid" plain "${LIMIT_RATE:-}"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    ;;
  esac
done
"$peers/stop_all.sh" >/dev/null 2>&1 || true
runs=()
for server in $servers; do runs+=("$out/$server"); done
"$bin/starling-loadgen" compare --out "$out" "${runs[@]}"
echo "report: $out/comparison.md"

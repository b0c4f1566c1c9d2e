#!/usr/bin/env bash
# Starts N nodes on this host with scripts/local-cluster.sh (one core each), waits
# until every node lists all N in joinedNodes and availableNodes, then checks every
# node every 5 s for SECONDS more: all N joined and available, none unavailable,
# discoveryWorks. Prints the time to form, each check's result and the nodes' RSS,
# and stops the cluster. Exits 1 if the cluster does not form within 60 s or any
# check fails.
#
#   scripts/cluster-health.sh [N] [SECONDS]     # defaults 16 nodes, 120 s
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
count="${1:-16}"; seconds="${2:-120}"
bin="${STARLING_BIN:-$root/target/release/starling}"
dir="$(mktemp -d /tmp/starling-health.XXXXXX)"
trap '"$root/scripts/local-cluster.sh" stop "$dir" >/dev/null' EXIT

# healthy I: node I sees all nodes joined and available, none unavailable.
healthy() {
  "$bin" --config "$dir/node$1/starling.toml" cets systemInfo 2>/dev/null | python3 -c "
import json, sys
info = json.load(sys.stdin)['data']['cets']['systemInfo']
ok = (len(info['joinedNodes']) == $count and len(info['availableNodes']) == $count
      and not info['unavailableNodes'] and info['discoveryWorks'])
if not ok and '${VERBOSE:-}':
    print('node$1:', len(info['joinedNodes']), 'joined,', len(info['availableNodes']), 'available,',
          info['unavailableNodes'], 'unavailable, discoveryWorks', info['discoveryWorks'])
sys.exit(0 if ok else 1)"
}

all_healthy() {
  local bad=0
  for i in $(seq 1 "$count"); do healthy "$i" || bad=$((bad + 1)); done
  return "$bad"
}

CORES=1 "$root/scripts/local-cluster.sh" start "$dir" "$count" >/dev/null
started=$(date +%s.%N)
formed=""
for _ in $(seq 1 60); do
  if all_healthy; then formed=$(date +%s.%N); break; fi
  [ -n "${VERBOSE:-}" ] && printf "not formed yet at %.1f s\n" "$(echo "$(date +%s.%N) - $started" | bc)"
  sleep 1
done
if [ -z "$formed" ]; then
  echo "FAIL: $count nodes did not form one cluster within 60 s"
  for i in $(seq 1 "$count"); do healthy "$i" || echo "  node$i: not healthy"; done
  exit 1
fi
printf '%d nodes formed one cluster in %.1f s\n' "$count" "$(echo "$formed - $started" | bc)"
checks=0; failures=0
deadline=$(( $(date +%s) + seconds ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 5
  checks=$((checks + 1))
  if ! all_healthy; then failures=$((failures + 1)); echo "check $checks: some node unhealthy"; fi
done
rss=0
for i in $(seq 1 "$count"); do
  pid="$(cat "$dir/node$i/pid")"
  kill -0 "$pid" || { echo "FAIL: node$i exited"; exit 1; }
  rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status")))
done
echo "$checks checks over ${seconds} s, $failures failed; total RSS $((rss / 1024)) MiB ($((rss / count)) KiB per node)"
[ "$failures" -eq 0 ]

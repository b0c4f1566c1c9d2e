#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS each (default 60), one after another, and
# fails if any found a crash. The suite runs it with 10 s; the one-hour run is
#   FUZZ_SECONDS=3600 FUZZ_TARGETS=server:core scripts/fuzz.sh
# Targets: wire:framer wire:stanza wire:sasl wire:c2s wire:web replicate:frames
# replicate:established server:core. `established` alters the bytes of an established
# link (flips, inserts, deletions, replays) and checks the peer delivers only a prefix
# of what was sent.
# The core target (server/fuzz) drives arbitrary stanzas, after authentication and
# bind, through one in-memory core with every module and a real SQLite file; its
# seeds are in server/fuzz/seeds/core. An input that runs past FUZZ_TIMEOUT seconds
# (default 30) or an out-of-memory fails the run like a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-wire:framer wire:stanza wire:sasl wire:c2s wire:web replicate:frames replicate:established server:core}"
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
for spec in $targets; do
  crate=${spec%%:*} target=${spec#*:}
  corpus="$crate/fuzz/corpus/$target"
  mkdir -p "$corpus"
  if [ -d "$crate/fuzz/seeds/$target" ]; then
    cp -n "$crate/fuzz/seeds/$target"/* "$corpus"/ 2>/dev/null || true
  fi
  echo "--- fuzz $crate:$target for ${seconds}s"
  # Built first, on its own: a target that does not build fails here, loudly (the run
  # below filters its output, which once hid a build error behind "exit 0").
  (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz build "$target" --sanitizer none)
  (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --sanitizer none "fuzz/corpus/$target" -- \
     -max_total_time="$seconds" -rss_limit_mb=4096 -timeout="${FUZZ_TIMEOUT:-30}" -print_final_stats=1 2>&1 \
     | grep -E "^Done|panicked|ERROR|ALARM|stat::number_of_executed_units|stat::peak_rss_mb" || true)
  # A hang (one input running past FUZZ_TIMEOUT seconds) or an out-of-memory is a
  # finding too, not only a panic.
  found=$(find "$crate/fuzz/artifacts/$target" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' \
    -o -name 'oom-*' -o -name 'leak-*' \) 2>/dev/null || true)
  if [ -n "$found" ]; then
    echo "fuzz target $target found a crash, hang or OOM:"; echo "$found"
    exit 1
  fi
done

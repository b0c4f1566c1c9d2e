#!/usr/bin/env bash
# The whole test suite, from a clean clone: formatting, lints, unit/property/
# integration tests, black-box tests with real XMPP clients, and a short fuzz smoke.
# `.ci/run` calls exactly this. Installs what it needs (a Python venv with slixmpp,
# cargo-fuzz) on first run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== %s ===\n' "$*"; }

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "unit, property and integration tests"
cargo test --workspace

step "Debian's packaged clients for black-box tests (python3-slixmpp 1.8.3, poezio, tmux)"
if ! /usr/bin/python3 -c "import slixmpp" 2>/dev/null || ! command -v poezio >/dev/null || ! command -v tmux >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y python3-slixmpp poezio tmux >/dev/null
fi

step "python clients for black-box tests"
if [ ! -x target/pyvenv/bin/python ]; then
  if ! python3 -m venv target/pyvenv 2>/dev/null; then
    rm -rf target/pyvenv
    if command -v apt-get >/dev/null; then apt-get install -y python3-venv >/dev/null; fi
    python3 -m venv target/pyvenv
  fi
fi
target/pyvenv/bin/pip install --quiet --disable-pip-version-check -r scripts/blackbox/requirements.txt

step "black-box: slixmpp against a real server process"
cargo build -p starling-server --bin starling
scripts/blackbox/run.sh

step "fuzz smoke (framer, stanza, SASL, replication frames)"
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
for spec in wire:framer wire:stanza wire:sasl replicate:frames; do
  crate=${spec%%:*} target=${spec#*:}
  (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --sanitizer none -- \
     -max_total_time="${FUZZ_SECONDS:-10}" -print_final_stats=0 2>&1 | grep -E "^Done|panicked|ERROR" || true)
  if ls "$crate"/fuzz/artifacts/"$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $target found a crash: $crate/fuzz/artifacts/$target"; exit 1
  fi
done

step "all tests passed"

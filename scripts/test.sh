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

step "Debian's chromium for converse.js (headless, driven by playwright-core)"
if ! command -v chromium >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null
fi

step "JavaScript clients for black-box tests (npm, into target/npm)"
mkdir -p target/npm
cp scripts/blackbox/js/package.json target/npm/
(cd target/npm && npm install --no-audit --no-fund --silent >/dev/null)

step "black-box: slixmpp, poezio, xmpp.js, strophe.js, StanzaJS and converse.js against a real server process"
cargo build -p starling-server --bin starling
scripts/blackbox/run.sh

step "fuzz smoke (framer, stanza, SASL, negotiation, replication frames, an altered link, a whole core)"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz.sh

step "all tests passed"

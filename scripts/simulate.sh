#!/usr/bin/env bash
# The long replication simulation: many more seeds and steps than the test command
# runs. A failure prints its seed; replay it with
#   SIM_SEED=<seed> SIM_STEPS=<steps> cargo test --release -p starling-replicate --test simulation -- --nocapture
# Usage: scripts/simulate.sh [SEEDS] [STEPS]   (defaults 2000 seeds, 4000 steps each)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-2000}
steps=${2:-4000}
started=$(date +%s)
SIM_SEEDS=$seeds SIM_STEPS=$steps cargo test --release -p starling-replicate --test simulation -- --nocapture
echo "simulated $seeds seeds x $steps steps in $(( $(date +%s) - started )) s"

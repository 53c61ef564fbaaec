#!/usr/bin/env bash
# The final with every k6 sample written to CSV and the VM's steal time sampled every second,
# then which seconds hold the samples slower than the run's p99 (contest/tail_vs_steal.py).
#   contest/steal-run.sh engine|floor [OUT_DIR]      (OUT_DIR defaults to results/)
# On a VM whose host takes CPU time (steal), this tells the host's share of the tail apart
# from ours: see README, "what limits p99 on a noisy host".
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?engine or floor}
out=${2:-results}
mkdir -p "$out"
name="$out/$what-$(date +%s)"
( while :; do echo "$(date +%s) $(awk '/^cpu /{print $9}' /proc/stat)"; sleep 1; done ) >"$name.steal" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT
case $what in
  engine) K6_OUT="csv=$name.csv.gz" cargo run --release --quiet -- contest --profile final ;;
  floor) K6_OUT="csv=$name.csv.gz" contest/floor.sh final ;;
  *) echo "steal-run.sh: engine or floor, not $what" >&2; exit 2 ;;
esac
kill $SAMPLER 2>/dev/null || true
python3 contest/tail_vs_steal.py "$name.csv.gz" "$name.steal"

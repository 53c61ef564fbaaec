#!/usr/bin/env bash
# Benchmark of the payment-processor simulator at zero delay (issue 3: it must never be the
# bottleneck): throughput with 64 connections, and latency of one connection (what a single
# request adds). Needs wrk (Debian: apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin rinha
PORT=${PORT:-18555}
target/release/rinha processor --port "$PORT" >/dev/null &
SIM=$!
trap 'kill $SIM' EXIT
sleep 0.5
echo "== throughput, 64 connections, 10 s"
wrk -t2 -c64 -d10s -s contest/bench/post.lua --latency "http://127.0.0.1:$PORT" | grep -E "Requests/sec|50%|99%"
echo "== one connection, 10 s (latency added per request)"
wrk -t1 -c1 -d10s -s contest/bench/post.lua --latency "http://127.0.0.1:$PORT" | grep -E "Requests/sec|50%|99%"

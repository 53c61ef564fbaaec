#!/usr/bin/env bash
# The machine's p99 floor: the contest's load against nginx answering 202 by itself.
#   contest/floor.sh [final|smoke]     (installs nginx from Debian when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
nginx -c "$PWD/contest/floor/nginx.conf" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null || true' EXIT
sleep 1
cargo run --release --quiet -- contest --profile "${1:-final}" --target http://127.0.0.1:9999

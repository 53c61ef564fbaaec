#!/usr/bin/env bash
# The machine's p99 floor: the contest's load against nginx answering 202 by itself
# (contest/floor/nginx.conf), through `rinha contest --target`, real simulators included.
#   contest/floor.sh [final|smoke|tiny]     (installs nginx from Debian when missing)
# Ports (for a machine where the defaults are busy): FLOOR_PORT (9999), DEFAULT_PORT (8001),
# FALLBACK_PORT (8002).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR_PORT=${FLOOR_PORT:-9999}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
conf=$(mktemp /tmp/rinha-floor-XXXXXX.conf)
sed -e "s/127.0.0.1:9999/127.0.0.1:$FLOOR_PORT/" \
    -e "s|/tmp/rinha-floor-nginx.pid|$conf.pid|" contest/floor/nginx.conf >"$conf"
nginx -c "$conf" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null || true; wait $NGINX 2>/dev/null || true; rm -f "$conf" "$conf.pid"' EXIT
sleep 1
kill -0 $NGINX 2>/dev/null || { echo "floor: nginx did not start (port $FLOOR_PORT taken?)" >&2; exit 1; }
cargo run --release --quiet -- contest --profile "${1:-final}" --target "http://127.0.0.1:$FLOOR_PORT" \
  --default-port "${DEFAULT_PORT:-8001}" --fallback-port "${FALLBACK_PORT:-8002}"

#!/usr/bin/env bash
# The contest deployment on this machine, without pulling any image.
#   contest/docker.sh build   release binary on the host -> image rinha-shm:local (FROM scratch)
#   contest/docker.sh up      build, processors' compose, then ours; wait like the contest runner
#   contest/docker.sh test    up, then `rinha contest --profile ${PROFILE:-smoke}` against it
#                             (DIRECT=1: at the balancer container's own address, not through
#                             the port Docker publishes on 127.0.0.1, to see what Docker's proxy costs)
#   contest/docker.sh down    stop and remove both composes, the volume and the network
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${RINHA_IMAGE:-rinha-shm:local}
export RINHA_IMAGE=$IMAGE
COMPOSE=${COMPOSE:-$(command -v docker-compose >/dev/null && echo "docker-compose --compatibility" || echo "docker compose")}
PROCS="$COMPOSE -p rinha-processors -f contest/processors.compose.yml"
OURS="$COMPOSE -p rinha -f docker-compose.yml"

build() {
  cargo build --release --locked --bin rinha
  local ctx=target/docker-context
  rm -rf "$ctx" && mkdir -p "$ctx/rootfs/etc"
  cp target/release/rinha "$ctx/rootfs/rinha"
  # The shared libraries the binary links, and the loader, at the paths it expects.
  for lib in $(ldd target/release/rinha | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  printf 'hosts: files dns\n' > "$ctx/rootfs/etc/nsswitch.conf"
  cp contest/Dockerfile.local "$ctx/Dockerfile"
  docker build -q -t "$IMAGE" "$ctx" >/dev/null
  echo "built $IMAGE"
}

wait_ready() {
  for i in $(seq 1 15); do
    if curl -fsS -m 3 http://127.0.0.1:9999/payments-summary >/dev/null 2>&1; then
      echo "ready after $i tries"; return 0
    fi
    sleep 5
  done
  echo "not ready after 15 tries" >&2; return 1
}

up() {
  build
  $PROCS up -d
  $OURS up -d
  wait_ready
}

down() {
  $OURS down -v --remove-orphans || true
  $PROCS down -v --remove-orphans || true
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  test)
    up
    trap down EXIT
    target=http://127.0.0.1:9999
    if [ "${DIRECT:-0}" = 1 ]; then
      ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$($OURS ps -q lb)" | awk '{print $1}')
      target=http://$ip:9999
    fi
    target/release/rinha contest --profile "${PROFILE:-smoke}" --target "$target" --external-processors
    ;;
  *) echo "usage: $0 build|up|down|test" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# run.sh — the main job (what `make run` does after deps and build): run one
# command in a fresh, throwaway VM. Networking lives in a network namespace
# this script creates, so the host's own network is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/build/bin
NS=banger-run
"$BIN/banger" --version
if [ "$(id -u)" != 0 ]; then
  echo "run.sh: VMs need root here (bridge, taps); showing the daemon instead" >&2
  exec "$BIN/banger" daemon status
fi
# The guest kernel and the default image (the debian-bookworm dev box) come
# from the Debian archive (and mise from the npm registry): build them outside
# the namespace (which has no uplink), once (~2 min); later runs reuse the cache.
"$BIN/banger" internal build-guest
# A daemon started outside the namespace would put the bridge on the host.
"$BIN/banger" daemon stop >/dev/null
ip netns add "$NS" 2>/dev/null || true
# Leave nothing behind: the daemon in the namespace, then the namespace.
cleanup() {
  ip netns exec "$NS" "$BIN/banger" daemon stop >/dev/null 2>&1 || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip -n "$NS" link set lo up
# The dev box: its OS and the toolchains a `vm run ./repo -- make test` finds.
start=$(date +%s)
ip netns exec "$NS" "$BIN/banger" vm run --rm -- sh -c '
  . /etc/os-release; echo "os:      $PRETTY_NAME, kernel $(uname -r)"
  echo "gcc:     $(gcc --version | head -n1)"
  echo "make:    $(make --version | head -n1)"
  echo "python3: $(python3 --version 2>&1), $(python3 -m pytest --version 2>&1 | head -n1)"
  echo "node:    $(node --version), npm $(npm --version)"
  echo "go:      $(go version)"
  echo "docker:  $(docker --version); daemon $(docker info --format "{{.ServerVersion}} ({{.Driver}})" 2>&1)"
  echo "mise:    $(mise --version)"
  echo "guest:   $(nproc) vCPU, $(free -m | awk "/^Mem:/ {print \$2}") MiB, /root $(df -h /root | awk "NR==2 {print \$2}")"'
echo "vm run (create, start, command, delete): $(( $(date +%s) - start )) s"
# The first run of a shape boots (cold) and leaves its warm-start template
# being made in the background; wait for it here, so that the daemon stopped
# below does not cut it short: the next `make run` starts from it (warm).
start=$(date +%s)
ip netns exec "$NS" "$BIN/banger" image warm debian-bookworm
echo "warm-start template ready: $(( $(date +%s) - start )) s (the next run starts warm)"
ip netns exec "$NS" "$BIN/banger" daemon status

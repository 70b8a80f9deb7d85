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
# The guest kernel and the default image (debian-bookworm) come from the
# Debian archive: build them outside the namespace (which has no uplink),
# once (~1 min); later runs reuse the cache.
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
ip netns exec "$NS" "$BIN/banger" vm run --rm -- sh -c 'uname -a; cat /etc/os-release'
ip netns exec "$NS" "$BIN/banger" daemon status

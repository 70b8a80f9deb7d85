#!/usr/bin/env bash
# install-deps.sh — install the Debian packages banger needs on this kind of
# machine (Debian 12). Idempotent: does nothing when everything is present.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils busybox-static kmod cpio e2fsprogs mmdebstrap iproute2
      nftables openssh-client xfsprogs git ca-certificates openssl passwd util-linux systemd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

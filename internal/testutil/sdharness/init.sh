#!/bin/bash
# sdharness init: runs as PID 1 of the namespaces sdharness.Start creates (new pid, mount,
# cgroup, uts, ipc and, unless HostNet, net namespaces; the process was cloned straight into
# the private cgroup2 subtree, which is therefore the root of its cgroup namespace).
#
# It builds a throwaway root (overlay: lower = host /, upper = tmpfs), pivots into it, mounts the
# API filesystems the way systemd-nspawn would, applies the test's binds and exec()s the host's
# real, unmodified systemd. Every path is resolved *after* pivot_root, so a symlink in the host
# tree can never redirect a write to the host. Do not add --log-target=console to systemd: it
# hides PID 1 lines such as "Killing process ..." from the journal.
#
# usage (by sdharness): bash init.sh NAME STATEDIR SYSTEMD NETNS(0|1) MACHINEID
# STATEDIR holds: binds ("ro|rw<TAB>host<TAB>inside" per line, host already symlink-free),
# devices (one host /dev path per line), console.log (bound to /dev/console), mnt/.
set -euo pipefail
NAME=$1 ST=$2 SYSTEMD=$3 NETNS=$4 MACHINEID=$5
OLD=/.sdharness-oldroot

# Nothing done here may propagate back to the host's mount namespace.
mount --make-rprivate /

MNT=$ST/mnt
mount -t tmpfs -o mode=755 sdharness "$MNT"
mkdir "$MNT/upper" "$MNT/work" "$MNT/root"
# lower = the host's root file system, read-only through overlayfs; every write lands in tmpfs.
mount -t overlay -o "lowerdir=/,upperdir=$MNT/upper,workdir=$MNT/work" overlay "$MNT/root"

cd "$MNT/root"
mkdir -p ".${OLD}"
pivot_root . ".${OLD}"
cd /

# /proc of the new pid namespace. Kernel-global knobs stay read-only, as under nspawn; the
# network sysctls of a private network namespace are made writable again (ip_forward etc.
# then change only that namespace).
mount -t proc -o nosuid,nodev,noexec proc /proc
for p in sys sysrq-trigger; do
	[ -e "/proc/$p" ] || continue
	mount --bind "/proc/$p" "/proc/$p"
	mount -o remount,bind,ro "/proc/$p"
done
if [ "$NETNS" = 1 ]; then
	mount --bind /proc/sys/net /proc/sys/net
	mount -o remount,bind,rw /proc/sys/net
fi

# sysfs of this network namespace, read-only (udev and friends skip themselves).
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
# cgroup2 mounted from inside the cgroup namespace: its root is our private subtree.
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup

# A minimal /dev: selected host device nodes bound in, a private devpts, /dev/console bound to
# a log file in STATEDIR.
mount -t tmpfs -o mode=755,nosuid,size=4m devtmp /dev
while IFS= read -r d; do
	[ -n "$d" ] || continue
	[ -e "$OLD$d" ] || continue
	mkdir -p "$(dirname "$d")"
	touch "$d"
	mount --bind "$OLD$d" "$d"
done <"$OLD$ST/devices"
touch /dev/console
mount --bind "$OLD$ST/console.log" /dev/console
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr

mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

# A minimal boot target so the host's multi-user services (databases, timers, gettys, ...)
# never start. Written into the overlay: the host is untouched.
mkdir -p /etc/systemd/system
cat >/etc/systemd/system/harness.target <<'EOF'
[Unit]
Description=sdharness minimal boot target
Requires=sysinit.target
After=sysinit.target
AllowIsolate=yes
EOF
echo "$NAME" >/etc/hostname
hostname "$NAME"
echo "$MACHINEID" >/etc/machine-id

# The test's binds, host side reached through the old root.
while IFS=$'\t' read -r mode src dst; do
	[ -n "$dst" ] || continue
	if [ -d "$OLD$src" ]; then
		mkdir -p "$dst"
	else
		mkdir -p "$(dirname "$dst")"
		[ -e "$dst" ] || touch "$dst"
	fi
	mount --bind "$OLD$src" "$dst"
	if [ "$mode" = ro ]; then
		mount -o remount,bind,ro "$dst"
	fi
done <"$OLD$ST/binds"

umount -l "$OLD"
rmdir "$OLD"

# Drop capabilities that act on the whole host kernel (modules, clock, raw I/O).
exec env -i container=sdharness TERM=dumb \
	setpriv --bounding-set=-sys_module,-sys_time,-sys_rawio,-wake_alarm \
	"$SYSTEMD" --unit=harness.target --show-status=no

#!/bin/sh
# banger guest boot script, run once by busybox init (sysinit) before sshd.
# Kernel command line keys:
#   banger.ip=A.B.C.D/NN   address of eth0 (no key: eth0 stays down)
#   banger.gw=A.B.C.D      default route
#   banger.hostname=NAME   hostname (default: /etc/hostname)
#   banger.dns=A.B.C.D[,..] nameservers written to /run/resolv.conf (= /etc/resolv.conf)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

mount -t proc proc /proc 2>/dev/null
mounted() { grep -q "^[^ ]* $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mounted /run || mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mounted /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/banger

say() { echo "$*" >/dev/console; }

ip=
gw=
name=
dns=
for a in $(cat /proc/cmdline); do
	case "$a" in
	banger.ip=*) ip=${a#banger.ip=} ;;
	banger.gw=*) gw=${a#banger.gw=} ;;
	banger.hostname=*) name=${a#banger.hostname=} ;;
	banger.dns=*) dns=${a#banger.dns=} ;;
	esac
done

rootrw=0
case ",$(awk '$2 == "/" { o = $4 } END { print o }' /proc/mounts)," in
*,rw,*) rootrw=1 ;;
esac

# An image built by a non-root user carries that user's uid: give it to root.
if [ $rootrw = 1 ] && [ "$(stat -c %u /etc/passwd)" != 0 ]; then
	chown -R -h 0:0 /bin /sbin /usr /lib /lib64 /etc /root /var 2>/dev/null
fi

# Per-VM work disk: /dev/vdb (ext4) is root's home and holds .ssh/authorized_keys.
if [ -b /dev/vdb ]; then
	if mount -t ext4 /dev/vdb /root; then
		for f in /root /root/.ssh /root/.ssh/authorized_keys; do
			[ -e "$f" ] && chown 0:0 "$f" && chmod go-w "$f"
		done
	else
		say "BANGER-WARN cannot mount /dev/vdb on /root"
	fi
fi

# banger's tools disk: /dev/vdc (ext4, read-only) holds the guest agent.
if [ -b /dev/vdc ]; then
	mkdir -p /run/banger-tools
	mount -t ext4 -o ro /dev/vdc /run/banger-tools || say "BANGER-WARN cannot mount the tools disk /dev/vdc"
fi

# Hostname, /etc/hosts and /etc/resolv.conf (both symlinks into /run).
[ -n "$name" ] || name=$(cat /etc/hostname 2>/dev/null)
[ -n "$name" ] || name=banger
hostname "$name"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" >/run/hosts
: >/run/resolv.conf
for d in $(echo "$dns" | tr , " "); do echo "nameserver $d"; done >/run/resolv.conf

# Network.
ip link set lo up
if [ -n "$ip" ]; then
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do usleep 10000; i=$((i + 1)); done
	if ip link set eth0 up && ip addr add "$ip" dev eth0; then
		[ -z "$gw" ] || ip route add default via "$gw" dev eth0 || say "BANGER-WARN cannot add default route via $gw"
	else
		say "BANGER-WARN cannot configure eth0 with $ip"
	fi
fi

# SSH host keys, ed25519 and ecdsa: made on first boot, kept on the root disk
# (a read-only root without keys gets per-boot keys under /run). The ecdsa key
# is not optional: dropbear 2022.83 advertises RSA host-key algorithms even
# without an RSA key and aborts the connection of a client that picks one
# (mkj/dropbear#219); Go's x/crypto/ssh prefers ecdsa over RSA, OpenSSH ed25519.
: >/run/banger/hostkeys
for type in ed25519 ecdsa; do
	key=/etc/dropbear/dropbear_${type}_host_key
	if [ ! -s $key ]; then
		[ $rootrw = 1 ] || key=/run/dropbear/dropbear_${type}_host_key
		mkdir -p "${key%/*}"
		rm -f "$key.tmp"
		if ! dropbearkey -t $type -f "$key.tmp" >/dev/null 2>&1 || ! mv "$key.tmp" "$key"; then
			say "BANGER-ERROR cannot generate the ssh host key $key"
			continue
		fi
		sync
	fi
	echo "$key" >>/run/banger/hostkeys
	pub=$(dropbearkey -y -f "$key" 2>/dev/null | grep -E '^(ssh-|ecdsa-)')
	[ -n "$pub" ] && say "BANGER-HOSTKEY ${pub% *}"
done
exit 0

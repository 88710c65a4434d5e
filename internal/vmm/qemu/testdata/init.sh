#!/bin/busybox sh
# /init of the test initramfs. The kernel passes smolvmtest=MODE from the
# command line in the environment: poweroff (default), sleep, echo or exit.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev

if [ "$smolvmtest" = echo ]; then
	for m in virtio_ring virtio virtio_mmio virtio_console; do
		$B insmod /m/$m.ko || echo "insmod $m failed"
	done
	dev=
	i=0
	while [ -z "$dev" ] && [ $i -lt 600 ]; do
		for p in /sys/class/virtio-ports/*; do
			[ -e "$p/name" ] && [ "$($B cat $p/name)" = smolvm.agent ] && dev=/dev/${p##*/}
		done
		[ -z "$dev" ] && $B sleep 0.1
		i=$((i+1))
	done
	[ -n "$dev" ] || echo "no smolvm.agent port"
	# One open of the port, read-write: virtio ports allow one opener.
	exec 3<>$dev
fi

echo SMOLVM-TEST-MARKER

case "$smolvmtest" in
# A port read returns EOF while no host end is connected: read again.
echo) while :; do $B cat <&3 >&3; $B sleep 0.05; done ;;
sleep) while :; do $B sleep 3600; done ;;
exit) exit 3 ;; # PID 1 exits: the kernel panics
esac
$B poweroff -f
while :; do $B sleep 3600; done

#!/bin/sh
# Build the test guest: OUT/vmlinuz and OUT/initrd.img (busybox, the virtio
# modules, the writer). Needs linux-image-amd64, busybox-static, gcc, cpio.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
kver=$(ls /lib/modules | sort -V | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/bin" "$work/lib/modules" "$work/proc" "$work/sys" "$work/dev"
cp /bin/busybox "$work/bin/busybox"
gcc -static -O2 -Wall -o "$work/bin/writer" "$here/writer.c"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
    virtio_console crc16 crc32c_generic mbcache jbd2 ext4 brd; do
    f=$(find "/lib/modules/$kver/kernel" -name "$m.ko*" | head -1)
    case $f in
    *.xz) xz -dc "$f" >"$work/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$work/lib/modules/$m.ko" ;;
    *) cp "$f" "$work/lib/modules/$m.ko" ;;
    esac
done
# the QEMU guest agent and the libraries it needs, at their host paths
if [ -x /usr/sbin/qemu-ga ]; then
    cp /usr/sbin/qemu-ga "$work/bin/qemu-ga"
    for lib in $(ldd /usr/sbin/qemu-ga | awk '/=> \// { print $3 } /^\t\/lib64/ { print $1 }'); do
        mkdir -p "$work$(dirname "$lib")"
        cp -L "$lib" "$work$lib"
    done
fi
cp "$here/init" "$work/init"
cp "$here/fsfreeze-hook" "$work/bin/fsfreeze-hook"
chmod 755 "$work/init" "$work/bin/fsfreeze-hook"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img"
cp "/boot/vmlinuz-$kver" "$out/vmlinuz"
chmod 644 "$out/vmlinuz" "$out/initrd.img"

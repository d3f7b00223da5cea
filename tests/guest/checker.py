#!/usr/bin/python3
"""Check that a disk image holds the writer's ring as of one instant.

usage: checker.py IMAGE BLOCKS    (IMAGE raw or qcow2; read with qemu-img)
Prints one line; exit 0 when consistent, 1 when not.
"""
import os
import struct
import subprocess
import sys
import tempfile
import zlib

BS = 4096


def read_ring(image, blocks):
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "ring.raw")
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", image, raw], check=True)
        with open(raw, "rb") as f:
            return f.read(blocks * BS)


def check(data, blocks):
    """Returns (ok, message)."""
    seqs = []
    for i in range(blocks):
        b = data[i * BS:(i + 1) * BS]
        if b[:8] != b"HSWRITE1":
            seqs.append(None)  # never written
            continue
        seq, idx, _t, crc = struct.unpack_from("<QQQI", b, 8)
        if zlib.crc32(b[:32] + b"\0\0\0\0" + b[36:]) != crc:
            return False, "block %d is torn (bad CRC)" % i
        if idx != i or seq % blocks != i:
            return False, "block %d holds block %d's data" % (i, idx)
        seqs.append(seq)
    written = [s for s in seqs if s is not None]
    if not written:
        return False, "no block was written"
    top = max(written)
    for i, s in enumerate(seqs):
        want = top - ((top - i) % blocks)
        if want < 0:
            want = None
        if s != want:
            return False, ("not one instant: block %d holds write %s, but write %d is there, "
                           "so it should hold %s" % (i, s, top, want))
    return True, "consistent: writes 0..%d, one instant" % top


def main():
    image, blocks = sys.argv[1], int(sys.argv[2])
    ok, msg = check(read_ring(image, blocks), blocks)
    print(msg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

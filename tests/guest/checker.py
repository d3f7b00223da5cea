#!/usr/bin/python3
"""Check that disk images hold the writer's rings as of one instant.

usage: checker.py BLOCKS IMAGE [IMAGE...]   (images in the writer's disk order)
Prints one line; exit 0 when consistent, 1 when not. Write s of the writer
went to disk s % n, block (s // n) % BLOCKS; a copy of all disks at one
instant holds, for one M, the latest write <= M in every block of every disk.
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


def disk_seqs(data, blocks, k, n):
    """The sequence number in each block of disk k, or an error string."""
    seqs = []
    for i in range(blocks):
        b = data[i * BS:(i + 1) * BS]
        if b[:8] != b"HSWRITE1":
            seqs.append(None)  # never written
            continue
        seq, idx, _t, crc = struct.unpack_from("<QQQI", b, 8)
        if zlib.crc32(b[:32] + b"\0\0\0\0" + b[36:]) != crc:
            return "disk %d block %d is torn (bad CRC)" % (k, i)
        if idx != i or seq % n != k or (seq // n) % blocks != i:
            return "disk %d block %d holds another block's data" % (k, i)
        seqs.append(seq)
    return seqs


def latest(top, k, n, blocks, i):
    """The latest write <= top that went to disk k, block i (None if none)."""
    # writes to (k, i): s = k + n * (i + blocks * r), r >= 0
    first = k + n * i
    if top < first:
        return None
    r = (top - first) // (n * blocks)
    return first + n * blocks * r


def check(datas, blocks):
    n = len(datas)
    all_seqs = []
    for k, data in enumerate(datas):
        seqs = disk_seqs(data, blocks, k, n)
        if isinstance(seqs, str):
            return False, seqs
        all_seqs.append(seqs)
    written = [s for seqs in all_seqs for s in seqs if s is not None]
    if not written:
        return False, "no block was written"
    top = max(written)
    for k, seqs in enumerate(all_seqs):
        for i, s in enumerate(seqs):
            want = latest(top, k, n, blocks, i)
            if s != want:
                return False, ("not one instant: disk %d block %d holds write %s, but write %d "
                               "is there, so it should hold %s" % (k, i, s, top, want))
    return True, "consistent: writes 0..%d on %d disk(s), one instant" % (top, n)


def main():
    blocks = int(sys.argv[1])
    ok, msg = check([read_ring(img, blocks) for img in sys.argv[2:]], blocks)
    print(msg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

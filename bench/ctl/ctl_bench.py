#!/usr/bin/python3
"""memoverlay-ctl's numbers (issue 15): export of 100,000 small upper files
(target: under 3 s), and stats latency on a mount with 200,000 upper
inodes (target: under 10 ms). As root:

    bench/ctl/ctl_bench.py [--build build] [--files 100000] [--inodes 200000]

Files are made by a C-speed path (one process, os.open/os.write) and the
measured step is the client's whole run (connect, walk, tar, stream into
a file on /dev/shm, or the JSON reply): what a user waits for. stats is
timed over the raw socket too (request to reply), which leaves out the
client's start-up (exec, dynamic linking)."""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import helpers as H  # noqa: E402


def fill(root, n, per_dir=1000, size=100):
    data = b"x" * size
    for i in range(n):
        d = os.path.join(root, f"d{i // per_dir}")
        if i % per_dir == 0:
            os.mkdir(d)
        fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)


def raw_stats(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    t = time.perf_counter()
    s.connect(path)
    body = b"memoverlay-ctl/1 stats"
    s.sendall(struct.pack("=I", len(body)) + body)
    buf = b""
    while True:
        k = s.recv(1 << 16)
        if not k:
            break
        buf += k
    s.close()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--inodes", type=int, default=200000)
    a = ap.parse_args()
    exe = os.path.join(a.build, "fs", "memoverlay")
    ctl = os.path.join(a.build, "tools", "memoverlay-ctl")
    with tempfile.TemporaryDirectory(prefix="ctl-bench.") as tmp:
        lower, mp = os.path.join(tmp, "l"), os.path.join(tmp, "m")
        os.mkdir(lower)
        os.mkdir(mp)
        subprocess.run([exe, mp, "-o", f"lowerdir={lower}"], check=True)
        try:
            t = time.perf_counter()
            fill(mp, a.files)
            print(f"made {a.files} files of 100 B in {time.perf_counter() - t:.1f} s")
            out = "/dev/shm/ctl-bench.tar"
            times = []
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run([ctl, "export", mp, out], check=True)
                times.append(time.perf_counter() - t)
            size = os.path.getsize(out)
            os.unlink(out)
            print(f"export of {a.files} files: {min(times):.2f} s best, "
                  f"{statistics.median(times):.2f} s median of 3 ({size / 2**20:.0f} MiB tar)")
            more = os.path.join(mp, "more")
            os.mkdir(more)
            fill(more, a.inodes - a.files - a.files // 1000 - 1)
            st = json.loads(subprocess.run([ctl, "stats", mp, "--json"], check=True,
                                           capture_output=True).stdout)
            print(f"upper inodes: {st['upper']['inodes_used']}")
            dev = H.mounts_at(mp)[-1]["dev"]
            path = f"/run/memoverlay/{dev}.sock"
            lat = sorted(raw_stats(path) for _ in range(50))
            print(f"stats at {st['upper']['inodes_used']} upper inodes, request to reply: "
                  f"median {statistics.median(lat) * 1e3:.2f} ms, "
                  f"p90 {lat[int(len(lat) * 0.9)] * 1e3:.2f} ms, max {lat[-1] * 1e3:.2f} ms")
            cl = []
            for _ in range(10):
                t = time.perf_counter()
                subprocess.run([ctl, "stats", mp, "--json"], check=True, capture_output=True)
                cl.append(time.perf_counter() - t)
            print(f"  whole `memoverlay-ctl stats --json` run: median "
                  f"{statistics.median(cl) * 1e3:.2f} ms")
        finally:
            H.unmount(mp)


if __name__ == "__main__":
    main()

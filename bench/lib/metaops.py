#!/usr/bin/python3
"""Timed metadata loops, run as a child process so a hung mount can be killed.

  metaops.py files DIR N       create, stat, unlink N empty files -> {"create":s,"stat":s,"unlink":s}
  metaops.py walk ROOT         lstat every entry below ROOT -> {"walk":s,"entries":n}
  metaops.py create DIR N      create N empty files (kept) -> {"create":s}
  metaops.py firstwrite FILE   open an existing file O_WRONLY + one 4k pwrite -> {"firstwrite":s}
"""
import json
import os
import random
import sys
import time


def files(d, n):
    os.makedirs(d, exist_ok=True)
    names = [os.path.join(d, "f%06d" % i) for i in range(n)]
    t0 = time.monotonic()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    t1 = time.monotonic()
    for p in names:
        os.stat(p)
    t2 = time.monotonic()
    for p in names:
        os.unlink(p)
    t3 = time.monotonic()
    return {"create": t1 - t0, "stat": t2 - t1, "unlink": t3 - t2}


def create(d, n):
    os.makedirs(d, exist_ok=True)
    t0 = time.monotonic()
    for i in range(n):
        os.close(os.open(os.path.join(d, "f%06d" % i), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    return {"create": time.monotonic() - t0}


def walk(root):
    t0 = time.monotonic()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return {"walk": time.monotonic() - t0, "entries": n}


def firstwrite(path):
    size = os.stat(path).st_size
    off = random.Random(7).randrange(0, max(1, size // 4096)) * 4096
    buf = os.urandom(4096)
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, buf, off)
    t1 = time.monotonic()
    os.close(fd)
    return {"firstwrite": t1 - t0}


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "files":
        r = files(sys.argv[2], int(sys.argv[3]))
    elif cmd == "create":
        r = create(sys.argv[2], int(sys.argv[3]))
    elif cmd == "walk":
        r = walk(sys.argv[2])
    elif cmd == "firstwrite":
        r = firstwrite(sys.argv[2])
    else:
        sys.exit("unknown command " + cmd)
    print(json.dumps(r))

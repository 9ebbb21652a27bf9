#!/usr/bin/python3
"""fsx.py: an fsx-style data integrity checker.

Random reads, writes, truncates, fallocates (plain, KEEP_SIZE, PUNCH_HOLE,
ZERO_RANGE, ZERO_RANGE|KEEP_SIZE), mmap writes and mmap reads, close/reopen
and fsync on ONE file, every result checked against an in-memory model of
the file's bytes. The file's current contents are the model's start, so it
can start in a lower layer. A mismatch raises FsxError naming the seed, the
op index, the first differing offset and the last operations.

    python3 tests/harness/fsx.py FILE [--seed S] [--ops N] [--maxlen BYTES]
"""

import argparse
import ctypes
import ctypes.util
import errno
import mmap
import os
import random
import sys

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10
FALLOC = {"alloc": 0, "alloc_keep": KEEP_SIZE, "punch": PUNCH_HOLE | KEEP_SIZE,
          "zero": ZERO_RANGE, "zero_keep": ZERO_RANGE | KEEP_SIZE}
PAGE = mmap.PAGESIZE


class FsxError(AssertionError):
    pass


class Fsx:
    def __init__(self, path, seed, maxlen=256 * 1024, mmap_ok=True):
        self.path = path
        self.seed = seed
        self.rng = random.Random(seed)
        self.maxlen = maxlen
        with open(path, "rb") as f:
            self.model = bytearray(f.read())
        self.fd = os.open(path, os.O_RDWR)
        self.log = []
        self.unsupported = set()   # fallocate modes / mmap refused with EOPNOTSUPP etc.
        self.mmap_ok = mmap_ok
        self.counts = {}

    # -- helpers -------------------------------------------------------------
    def fail(self, msg):
        tail = "\n".join(f"  {i}: {s}" for i, s in self.log[-25:])
        raise FsxError(f"fsx seed {self.seed} on {self.path}: op {len(self.log) - 1}: {msg}\n"
                       f"model size {len(self.model)}; last operations:\n{tail}")

    def compare(self, off, got, what):
        exp = bytes(self.model[off:off + len(got)])
        if got != exp:
            i = next((k for k in range(min(len(got), len(exp))) if got[k] != exp[k]),
                     min(len(got), len(exp)))
            self.fail(f"{what}: data differs at file offset {off + i}: got "
                      f"{got[i:i + 16].hex()} expected {exp[i:i + 16].hex()} "
                      f"(read {len(got)} bytes, expected {len(exp)})")

    def check_size(self, what):
        sz = os.fstat(self.fd).st_size
        if sz != len(self.model):
            self.fail(f"{what}: st_size {sz}, model {len(self.model)}")

    def pick(self):
        size = len(self.model)
        off = self.rng.choice([0, self.rng.randrange(self.maxlen),
                               self.rng.randrange(size + 1) if size else 0,
                               max(0, size - self.rng.randrange(1, 5000)),
                               (self.rng.randrange(self.maxlen) // PAGE) * PAGE])
        ln = self.rng.choice([1, 7, 512, PAGE, PAGE + 3, self.rng.randrange(1, 65536)])
        off = min(off, self.maxlen - 1)
        ln = max(1, min(ln, self.maxlen - off))
        return off, ln

    # -- operations ------------------------------------------------------------
    def op_read(self):
        off, ln = self.pick()
        self.log.append((len(self.log), f"pread off={off} len={ln}"))
        got = os.pread(self.fd, ln, off)
        self.compare(off, got, "pread")
        exp_len = max(0, min(ln, len(self.model) - off))
        if len(got) != exp_len:
            self.fail(f"pread returned {len(got)} bytes, expected {exp_len}")

    def op_write(self):
        off, ln = self.pick()
        data = self.rng.randbytes(ln)
        self.log.append((len(self.log), f"pwrite off={off} len={ln}"))
        n = os.pwrite(self.fd, data, off)
        if n != ln:
            self.fail(f"pwrite wrote {n} of {ln}")
        if off > len(self.model):
            self.model.extend(bytes(off - len(self.model)))
        self.model[off:off + ln] = data

    def op_truncate(self):
        size = self.rng.choice([0, self.rng.randrange(self.maxlen),
                                max(0, len(self.model) + self.rng.randrange(-9000, 9000))])
        self.log.append((len(self.log), f"ftruncate {size}"))
        os.ftruncate(self.fd, size)
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))
        self.check_size("ftruncate")

    def op_fallocate(self):
        name = self.rng.choice(list(FALLOC))
        if name in self.unsupported:
            return
        off, ln = self.pick()
        self.log.append((len(self.log), f"fallocate {name} off={off} len={ln}"))
        if libc.fallocate64(self.fd, FALLOC[name], off, ln) != 0:
            e = ctypes.get_errno()
            if e in (errno.EOPNOTSUPP, errno.ENOSYS):
                self.unsupported.add(name)
                self.log[-1] = (self.log[-1][0], self.log[-1][1] + " -> EOPNOTSUPP")
                return
            self.fail(f"fallocate {name}: {errno.errorcode.get(e, e)}")
        mode = FALLOC[name]
        end = off + ln
        if mode & (PUNCH_HOLE | ZERO_RANGE):
            zend = min(end, len(self.model)) if mode & KEEP_SIZE else end
            if zend > len(self.model):
                self.model.extend(bytes(zend - len(self.model)))
            if zend > off:
                self.model[off:zend] = bytes(zend - off)
        elif not mode & KEEP_SIZE and end > len(self.model):
            self.model.extend(bytes(end - len(self.model)))
        self.check_size(f"fallocate {name}")

    def _map(self, write):
        size = len(self.model)
        if not self.mmap_ok or size == 0:
            return None
        start = (self.rng.randrange(size) // PAGE) * PAGE
        ln = min(size - start, self.rng.choice([1, 100, PAGE, 3 * PAGE + 5, 40000]))
        try:
            m = mmap.mmap(self.fd, ln + 0, mmap.MAP_SHARED,
                          mmap.PROT_READ | (mmap.PROT_WRITE if write else 0), offset=start)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EINVAL, errno.EACCES):
                self.mmap_ok = False
                self.unsupported.add(f"mmap ({errno.errorcode[e.errno]})")
                return None
            raise
        return m, start, ln

    def op_mmap_write(self):
        r = self._map(True)
        if not r:
            return
        m, start, ln = r
        try:
            o = self.rng.randrange(ln)
            k = self.rng.randrange(1, ln - o + 1)
            data = self.rng.randbytes(k)
            sync = self.rng.random() < 0.5
            self.log.append((len(self.log), f"mmap write off={start + o} len={k}"
                                            f"{' msync' if sync else ''}"))
            m[o:o + k] = data
            self.model[start + o:start + o + k] = data
            if sync:
                m.flush()
        finally:
            m.close()

    def op_mmap_read(self):
        r = self._map(False)
        if not r:
            return
        m, start, ln = r
        try:
            self.log.append((len(self.log), f"mmap read off={start} len={ln}"))
            self.compare(start, m[:ln], "mmap read")
        finally:
            m.close()

    def op_reopen(self):
        self.log.append((len(self.log), "close+reopen"))
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)
        self.check_size("reopen")

    def op_fsync(self):
        self.log.append((len(self.log), "fsync"))
        os.fsync(self.fd)

    def op_check_all(self):
        self.log.append((len(self.log), "read whole file"))
        self.check_size("whole-file check")
        got = os.pread(self.fd, len(self.model) + 10, 0)
        self.compare(0, got, "whole-file read")
        if len(got) != len(self.model):
            self.fail(f"whole-file read gave {len(got)} bytes, model {len(self.model)}")

    OPS = [("read", 20), ("write", 25), ("truncate", 5), ("fallocate", 12),
           ("mmap_write", 8), ("mmap_read", 6), ("reopen", 2), ("fsync", 2), ("check_all", 3)]

    def run(self, nops):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        for _ in range(nops):
            n = self.rng.choices(names, weights)[0]
            self.counts[n] = self.counts.get(n, 0) + 1
            try:
                getattr(self, "op_" + n)()
            except OSError as e:
                self.fail(f"{n}: unexpected {e!r}")
        self.op_check_all()
        return self

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def verify_fresh(self):
        """Reads the file by path (new open) and compares it with the model."""
        with open(self.path, "rb") as f:
            got = f.read()
        if got != bytes(self.model):
            self.log.append((len(self.log), "fresh open, read all"))
            self.compare(0, got, "fresh read")
            self.fail(f"fresh read gave {len(got)} bytes, model {len(self.model)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="fsx-style data integrity check of one file")
    ap.add_argument("file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ops", type=int, default=10000)
    ap.add_argument("--maxlen", type=int, default=256 * 1024)
    ap.add_argument("--no-mmap", action="store_true")
    a = ap.parse_args(argv)
    if not os.path.exists(a.file):
        open(a.file, "wb").close()
    f = Fsx(a.file, a.seed, a.maxlen, not a.no_mmap)
    try:
        f.run(a.ops)
    except FsxError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        f.close()
    f.verify_fresh()
    print(f"fsx seed {a.seed}: {a.ops} ops ok {f.counts}; unsupported: {sorted(f.unsupported)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

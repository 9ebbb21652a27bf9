#!/usr/bin/python3
"""difftest: random differential testing of memoverlay against kernel overlayfs.

For each seed: build a random lower tree (twice, identically: one copy for
memoverlay, one for the kernel), mount memoverlay over one and kernel
overlayfs (tmpfs upper, redirect_dir=on, index=on) over the other, then run
one random sequence of operations on both in lock step. Every step's result
(value or errno) is compared; at the end the whole visible trees are
compared, and both lower trees must be unchanged. On a mismatch the sequence
is shrunk (delta debugging) and the seed plus the minimal sequence printed.

    python3 tests/harness/difftest.py --seeds 50 --steps 500 [--first-seed S]
        [--exe build/fs/memoverlay] [--opts nowriteback] [--size BYTES] [--no-shrink]

With --size both sides get the same upper size limit and the operations
include fallocates at the edge of the free space (ENOSPC, nothing allocated).

Must run as root (kernel overlayfs mounts). The operation sequence is pure
data generated from the seed, so a seed reproduces exactly; `--seed S --show`
prints the sequence.

Intended differences (the ONE place they are listed) are in INTENDED below.
"""

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import platform
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import helpers as H  # noqa: E402

# --------------------------------------------------------------------------
# Intended differences: what is NOT compared, and why. Everything else that a
# user can observe through the operations below is compared.
INTENDED = {
    "timestamps": "atime/mtime/ctime are set by each filesystem at its own moment; only "
                  "times given explicitly to utimensat are compared (right after the call)",
    "st_ino": "inode numbers are allocated differently; instead, which paths share one "
              "inode (hard-link groups) is compared",
    "st_dev": "two different mounts",
    "st_blocks/st_blksize": "allocation granularity of tmpfs vs the daemon's filestore",
    "directory st_size": "tmpfs counts entries in its own way; the daemon too",
    "directory st_nlink": "overlayfs reports merged directory link counts from the layers "
                          "it saw; not meaningful across implementations. Compared instead: "
                          "whether fstat on an open directory says it is gone (link count 0) "
                          "once its name went (rmdir, renamed over) -- on kernel overlayfs, "
                          "which shows a merged or lower directory's old count there, 'gone' "
                          "is what the kernel says of the fd itself (its /proc/self/fd link "
                          "ends in ' (deleted)'); memoverlay answers as tmpfs",
    "trusted.overlay.* xattrs": "kernel overlayfs bookkeeping (hidden anyway)",
    "fallocate ZERO_RANGE": "tmpfs (the kernel overlay's upper) does not support it "
                            "(EOPNOTSUPP); not generated here, fsx.py checks it against a model",
    "read-only fd before copy-up": "on kernel overlayfs an fd opened O_RDONLY on a lower file "
                                   "keeps pointing at the lower file: after a copy-up or unlink "
                                   "it sees stale data, size and link count (documented overlayfs "
                                   "non-POSIX behaviour). memoverlay does what POSIX says, so the "
                                   "harness copies the file up on the kernel side (open for "
                                   "writing, close) before every read-only open",
    "security.* / system.* xattrs": "not generated (selinux labels, ACLs differ by host), "
                                    "except system.posix_acl_access, which setacl writes "
                                    "(as the file's owner inside or outside its group, or "
                                    "as another user) and which is compared",
}

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

RENAME_FLAGS = {0: "0", 1: "NOREPLACE", 2: "EXCHANGE"}
FALLOC_MODES = {0: "0", 1: "KEEP_SIZE", 3: "PUNCH|KEEP"}   # no ZERO_RANGE: see INTENDED

# Access ACLs setacl writes, in setfacl's words: two the mode says all of, two
# with named entries and a mask.
ACLS = ["u::rwx,g::rwx,o::rwx", "u::rw-,g::r--,o::---",
        "u::rwx,u:1000:r-x,g::r-x,m::rwx,o::r--", "u::rwx,g::---,g:65534:rw-,m::rw-,o::---"]
# Who writes it: the file's owner in its group, outside it (S_ISGID goes,
# unless the owner is root), or someone else (EPERM).
ACL_WRITERS = ["owner-in-group", "owner-outside-group", "other-user"]
ACL_ACCESS = "system.posix_acl_access"
_ACL_TAGS = {"u": 0x01, "g": 0x04, "m": 0x10, "o": 0x20}   # named u: 0x02, g: 0x08


def acl_xattr(text):
    """setfacl's text form to the kernel's xattr form (version 2; entries of
    tag, perm, id, little endian)."""
    out = struct.pack("<I", 2)
    for ent in text.split(","):
        tag, qual, perm = ent.split(":")
        bits = sum(v for c, v in zip(perm, (4, 2, 1)) if c != "-")
        if qual:
            out += struct.pack("<HHI", _ACL_TAGS[tag] << 1, bits, int(qual))
        else:
            out += struct.pack("<HHI", _ACL_TAGS[tag], bits, 0xFFFFFFFF)
    return out


# Credentials are per thread in Linux; glibc's set*id() change every thread
# of the process, the raw system calls only the calling one. setacl runs in
# a thread of its own with the writer's ids, which dies with it.
_SYS_IDS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147)}   # setgroups, setresgid, setresuid


def as_ids_in_thread(uid, gid, fn):
    """FN() in a new thread running as UID with group GID only; returns its
    result or raises its OSError."""
    nrs = _SYS_IDS.get(platform.machine())
    if nrs is None:
        raise OSError(errno.ENOSYS, "per-thread ids: unknown architecture")
    box = {}

    def run():
        groups = (ctypes.c_uint * 1)(gid)
        for nr, args in ((nrs[0], (1, groups)), (nrs[1], (gid, gid, gid)),
                         (nrs[2], (uid, uid, uid))):
            if libc.syscall(nr, *args) != 0:
                box["err"] = OSError(ctypes.get_errno(), "set ids")
                return
        try:
            box["ok"] = fn()
        except OSError as e:
            box["err"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box.get("ok")

# --------------------------------------------------------------------------
# The random lower tree

NAMES = ["a", "b", "c", "d", "e"]          # lower names
NEW_NAMES = ["x", "y"]                    # names only the ops create
UIDS = [0, 1, 1000, 65534, 4000000]


def _data(seed, n):
    return random.Random(seed).randbytes(n)


def build_lower(root, seed, hardlinks=True):
    """A random tree under ROOT (already existing, empty). Deterministic in SEED."""
    rng = random.Random(seed * 7919 + 1)
    files = []

    def fill(d, depth):
        n = rng.randint(3 if depth == 0 else 1, 5)
        for name in rng.sample(NAMES, n):
            p = os.path.join(d, name)
            kind = rng.random()
            if kind < 0.3 and depth < 3:
                os.mkdir(p, rng.choice([0o755, 0o700, 0o775, 0o1777]))
                fill(p, depth + 1)
            elif kind < 0.75:
                size = rng.choice([0, 1, 100, 4096, 5000, 70000])
                with open(p, "wb") as f:
                    f.write(_data(rng.random(), size))
                files.append(p)
            elif kind < 0.85:
                os.symlink(rng.choice(NAMES + ["nowhere", "a/b"]), p)
            elif kind < 0.9 and files:
                f = rng.choice(files)
                if hardlinks:
                    os.link(f, p)
                else:
                    shutil.copy2(f, p)
            elif kind < 0.95:
                os.mkfifo(p)
            else:
                os.mkdir(p)  # empty directory
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode):
                if rng.random() < 0.3:
                    os.chmod(p, rng.choice([0o600, 0o644, 0o755, 0o4755, 0o2755, 0o444]))
                if rng.random() < 0.3:
                    os.chown(p, rng.choice(UIDS), rng.choice(UIDS))
                if rng.random() < 0.3 and not stat.S_ISFIFO(st.st_mode):
                    os.setxattr(p, "user." + rng.choice(["k1", "k2"]), _data(rng.random(), 8))
    fill(root, 0)


def lower_paths(root):
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for n in dirs + files:
            out.append(n if rel == "." else rel + "/" + n)
    return sorted(out)


def describe_lower(root):
    """One line: every lower path with its type (d/f/l/p), size, hard-link groups."""
    out, inodes = [], {}
    for rel in lower_paths(root):
        st = os.lstat(os.path.join(root, rel))
        t = stat.filemode(st.st_mode)[0].replace("-", "f")
        if stat.S_ISREG(st.st_mode):
            out.append(f"{rel}(f{st.st_size})")
            inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            out.append(f"{rel}->{os.readlink(os.path.join(root, rel))}")
        else:
            out.append(f"{rel}({t})")
    links = [g for g in inodes.values() if len(g) > 1]
    return " ".join(out) + (f"; hard links: {links}" if links else "")


def _is(layers, rel, test):
    for l in layers:   # top first: the first layer that has REL decides
        p = os.path.join(l, rel)
        if os.path.lexists(p):
            return test(p)
    return None


def path_pool(layers):
    """Every lower path, plus new names in each lower directory and in new
    ones; and the subset likely to be regular files."""
    pool = set(p for l in layers for p in lower_paths(l))
    isdir = lambda p: os.path.isdir(p) and not os.path.islink(p)  # noqa: E731
    dirs = [""] + [p for p in pool if _is(layers, p, isdir)]
    for d in dirs:
        for n in NEW_NAMES + NAMES[:2]:
            pool.add((d + "/" + n) if d else n)
    pool.update(["x/y", "x/a", "y/x"])
    files = set(p for p in pool if _is(layers, p, os.path.isfile) in (None, True))
    files -= {"x/y", "x/a", "y/x"}
    # likely directories: the lower ones, and new names where mkdir may make one
    dirs = set(dirs[1:]) | set(p for p in pool if _is(layers, p, isdir) is None)
    return sorted(pool), sorted(files), sorted(dirs)


# --------------------------------------------------------------------------
# The random operation sequence (pure data)

NSLOTS = 4
OPEN_FLAGS = [
    ("RDONLY", os.O_RDONLY), ("WRONLY", os.O_WRONLY), ("RDWR", os.O_RDWR),
]
OPEN_MODS = [
    ("CREAT", os.O_CREAT), ("EXCL", os.O_EXCL), ("TRUNC", os.O_TRUNC),
    ("APPEND", os.O_APPEND), ("DIRECTORY", os.O_DIRECTORY), ("NOFOLLOW", os.O_NOFOLLOW),
]


def gen_ops(seed, steps, pool, limited=False):
    """POOL: (all paths, paths likely to be regular files, likely directories).
    LIMITED: both sides have the same small size limit, so "room" (fallocate
    near the free space) may be generated."""
    rng = random.Random(seed)
    pool, fpool, dpool = pool
    P = lambda: rng.choice(pool)  # noqa: E731
    F = lambda: rng.choice(fpool) if rng.random() < 0.7 else P()  # noqa: E731
    D = lambda: rng.choice(dpool) if dpool and rng.random() < 0.7 else P()  # noqa: E731
    last = [0]
    # The directory opened last (path, slot): rename onto it or rmdir of it,
    # then fstat on its fd, ask what an open directory whose name went looks
    # like. Such sequences are rare by chance (the directory must exist, the
    # one renamed onto it too, and be empty), so those ops often come with a
    # mkdir before them and an fstat after. The path whose mode or owner
    # changed last: setacl on it asks what an ACL write does to S_ISGID.
    last_dir = [None]
    last_meta = [None]

    def fstat_last_dir():
        if rng.random() < 0.6:
            ops.append(("fstat", last_dir[0][1]))

    def S():  # an fd op mostly uses the slot opened last
        return last[0] if rng.random() < 0.75 else rng.randrange(NSLOTS)
    ops = []
    weights = {
        "open": 8, "close": 2, "write": 7, "pwrite": 6, "read": 5, "pread": 4,
        "fstat": 3, "ftruncate": 3, "fallocate": 4, "fsync": 1,
        "wfile": 5, "rfile": 4, "truncate": 3, "mkdir": 5, "rmdir": 4, "unlink": 5,
        "rename": 8, "link": 3, "symlink": 3, "readlink": 1, "chmod": 3, "chown": 3,
        "utimens": 2, "setxattr": 3, "removexattr": 2, "getxattr": 1, "listxattr": 1,
        "readdir": 4, "stat": 4, "mkfifo": 1, "opendir": 3, "setacl": 3,
    }
    if limited:
        weights["room"] = 3
    names = list(weights)
    w = [weights[n] for n in names]
    for _ in range(steps):
        op = rng.choices(names, w)[0]
        slot = S()
        if op == "open":
            slot = rng.randrange(NSLOTS)
            last[0] = slot
            acc = rng.choice(OPEN_FLAGS[1:] * 2 + OPEN_FLAGS[:1])
            mods = [m for m in OPEN_MODS if rng.random() < (0.6 if m[0] == "CREAT" else
                                                            0.05 if m[0] == "DIRECTORY" else 0.12)]
            ops.append((op, slot, F(), "|".join([acc[0]] + [m[0] for m in mods]),
                        rng.choice([0o644, 0o600, 0o755, 0o4777])))
        elif op == "opendir":
            slot = rng.randrange(NSLOTS)
            last[0] = slot
            last_dir[0] = (D(), slot)
            if rng.random() < 0.5:
                ops.append(("mkdir", last_dir[0][0], rng.choice([0o755, 0o2775])))
            ops.append((op, slot, last_dir[0][0]))
        elif op in ("close", "fstat", "fsync"):
            ops.append((op, slot))
        elif op == "write":
            ops.append((op, slot, rng.randrange(1 << 30), rng.choice([1, 10, 100, 4096, 9000])))
        elif op == "pwrite":
            ops.append((op, slot, rng.choice([0, 1, 4095, 4096, 5000, 70000, rng.randrange(80000)]),
                        rng.randrange(1 << 30), rng.choice([1, 10, 100, 4096, 9000])))
        elif op == "read":
            ops.append((op, slot, rng.choice([1, 100, 4096, 100000])))
        elif op == "pread":
            ops.append((op, slot, rng.randrange(80000), rng.choice([1, 100, 4096, 100000])))
        elif op == "ftruncate":
            ops.append((op, slot, rng.choice([0, 1, 100, 4096, 5000, 80000])))
        elif op == "fallocate":
            ops.append((op, slot, rng.choice(list(FALLOC_MODES)), rng.randrange(80000),
                        rng.choice([1, 100, 4096, 10000])))
        elif op == "wfile":
            ops.append((op, F(), rng.choice([0, 1, 4096, 70000, rng.randrange(80000)]),
                        rng.randrange(1 << 30), rng.choice([1, 100, 5000]),
                        rng.random() < 0.3))
        elif op == "rmdir":
            if last_dir[0] and rng.random() < 0.4:
                ops.append((op, last_dir[0][0]))
                fstat_last_dir()
            else:
                ops.append((op, D()))
        elif op in ("rfile", "unlink", "readlink", "readdir", "listxattr", "mkfifo"):
            ops.append((op, P()))
        elif op == "truncate":
            ops.append((op, F(), rng.choice([0, 1, 100, 4096, 5000, 80000])))
        elif op == "mkdir":
            last_meta[0] = D()
            ops.append((op, last_meta[0], rng.choice([0o755, 0o700, 0o2775])))
        elif op == "rename":
            if last_dir[0] and rng.random() < 0.3:   # a directory onto the open one
                src = D()
                if rng.random() < 0.6:
                    ops.append(("mkdir", src, rng.choice([0o755, 0o700])))
                ops.append((op, src, last_dir[0][0], rng.choices([0, 2], [8, 2])[0]))
                fstat_last_dir()
            else:
                ops.append((op, P(), P(), rng.choices([0, 1, 2], [6, 2, 2])[0]))
        elif op == "link":
            ops.append((op, P(), P()))
        elif op == "symlink":
            ops.append((op, rng.choice(NAMES + NEW_NAMES + ["nowhere", "a/b", "x/y"]), P()))
        elif op == "chmod":
            last_meta[0] = P()
            ops.append((op, last_meta[0],
                        rng.choice([0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1777, 0o000])))
        elif op == "chown":
            last_meta[0] = P()
            ops.append((op, last_meta[0], rng.choice(UIDS + [-1]), rng.choice(UIDS + [-1]),
                        rng.random() < 0.3))
        elif op == "setacl":
            rel = last_meta[0] if last_meta[0] and rng.random() < 0.5 else P()
            if rng.random() < 0.4:   # a set-group-ID file of a plain user, as chown and chmod make it
                ops.append(("chown", rel, rng.choice(UIDS[1:]), rng.choice(UIDS), False))
                ops.append(("chmod", rel, rng.choice([0o2755, 0o2775, 0o6750])))
            ops.append((op, rel, rng.randrange(len(ACLS)), rng.choice(ACL_WRITERS)))
        elif op == "utimens":
            t = lambda: rng.choice(["NOW", "OMIT", (rng.randrange(1 << 31), rng.randrange(10**9))])  # noqa: E731
            ops.append((op, P(), t(), t(), rng.random() < 0.3))
        elif op == "setxattr":
            ops.append((op, P(), "user." + rng.choice(["k1", "k2", "k3"]),
                        rng.randrange(1 << 30), rng.choice([0, 5, 100]), rng.choice([0, 1, 2]),
                        rng.random() < 0.2))
        elif op in ("removexattr", "getxattr"):
            ops.append((op, P(), "user." + rng.choice(["k1", "k2", "k3"])))
        elif op == "stat":
            ops.append((op, P(), rng.random() < 0.5))
        elif op == "room":
            # fallocate of the free space and a little less or more: the
            # edge is where a filesystem says ENOSPC and allocates nothing
            ops.append((op, rng.choice([-8192, -4096, 0, 1, 4096, 1 << 20]),
                        rng.choice([0, 1])))   # FALLOC_MODES: 0 or KEEP_SIZE
    return ops


def fmt_op(op):
    name, *a = op
    if name == "open":
        return f"open(slot{a[0]}, {a[1]!r}, {a[2]}, {oct(a[3])})"
    if name == "rename":
        return f"renameat2({a[0]!r}, {a[1]!r}, {RENAME_FLAGS[a[2]]})"
    if name == "fallocate":
        return f"fallocate(slot{a[0]}, {FALLOC_MODES[a[1]]}, off={a[2]}, len={a[3]})"
    if name in ("chmod", "mkdir"):
        return f"{name}({a[0]!r}, {oct(a[1])})"
    if name in ("write",):
        return f"write(slot{a[0]}, {a[2]} bytes)"
    if name in ("pwrite",):
        return f"pwrite(slot{a[0]}, off={a[1]}, {a[3]} bytes)"
    if name == "wfile":
        return f"write_file({a[0]!r}, off={a[1]}, {a[3]} bytes{', O_TRUNC' if a[4] else ''})"
    if name == "opendir":
        return f"open(slot{a[0]}, {a[1]!r}, RDONLY|DIRECTORY)"
    if name == "setacl":
        return f"setfacl --set {ACLS[a[1]]} {a[0]!r} (as {a[2]})"
    return f"{name}({', '.join(('slot%d' % x) if i == 0 and name in SLOT_OPS else repr(x) for i, x in enumerate(a))})"


SLOT_OPS = {"close", "fstat", "fsync", "read", "pread", "ftruncate"}

# --------------------------------------------------------------------------
# Running one operation on one root


def _norm_stat(st, with_times=False):
    t = stat.S_IFMT(st.st_mode)
    r = [stat.filemode(st.st_mode), st.st_uid, st.st_gid]
    if not stat.S_ISDIR(st.st_mode):
        r += [st.st_size, st.st_nlink]
    if stat.S_ISCHR(t) or stat.S_ISBLK(t):
        r.append(st.st_rdev)
    return tuple(r)


def _digest(b):
    if len(b) <= 16:
        return b
    return (len(b), hashlib.sha256(b).hexdigest()[:16])


def _check(rc):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Runner:
    """Runs ops against one mount root, keeping its own fd slots."""

    def __init__(self, root, kernel=False):
        self.root = root
        self.kernel = kernel
        self.fds = [None] * NSLOTS

    def p(self, rel):
        return os.path.join(self.root, rel)

    def close_all(self):
        for i, fd in enumerate(self.fds):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                self.fds[i] = None

    def fd(self, slot):
        fd = self.fds[slot]
        if fd is None:
            raise OSError(errno.EBADF, "empty slot")
        return fd

    def _kernel_copy_up(self, rel, fl):
        """See INTENDED "read-only fd before copy-up": copy an existing
        regular file up first (open for writing, close; changes nothing
        visible) so that the read-only fd sees later changes as POSIX says."""
        try:
            st = os.stat(self.p(rel), follow_symlinks=not fl & os.O_NOFOLLOW)
            if stat.S_ISREG(st.st_mode):
                os.close(os.open(self.p(rel), os.O_WRONLY | os.O_NONBLOCK | (fl & os.O_NOFOLLOW)))
        except OSError:
            pass

    def _dir_gone(self, fd, st):
        """Whether fstat says the open directory FD lost its name: link
        count 0. On kernel overlayfs, which shows a merged or lower
        directory's old count, whether the kernel says the fd's directory
        was deleted (see INTENDED, "directory st_nlink")."""
        if st.st_nlink == 0 or not self.kernel:
            return st.st_nlink == 0
        return os.readlink(f"/proc/self/fd/{fd}").endswith(" (deleted)")

    def _setacl(self, rel, acl, writer):
        """setfacl --set ACLS[acl] REL, run by WRITER (see ACL_WRITERS):
        returns the mode and owner after it, and the ACL it left."""
        fd = os.open(self.p(rel), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            uid = st.st_uid if writer != "other-user" else (1 if st.st_uid != 1 else 1000)
            gid = st.st_gid if writer == "owner-in-group" else st.st_gid ^ 1
            as_ids_in_thread(uid, gid, lambda: os.setxattr(fd, ACL_ACCESS, acl_xattr(ACLS[acl])))
            try:
                left = os.getxattr(fd, ACL_ACCESS)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
                left = None
            return _norm_stat(os.fstat(fd)), left
        finally:
            os.close(fd)

    def _room(self, delta, mode):
        """fallocate of the free space + DELTA into a new file, which then
        goes: (errno name or None, whether its size is what the call says,
        free space unchanged after a failure). Each side measures its own
        free space (their uppers hold different things: the kernel copies
        whole files up), so only these are compared, not the numbers."""
        def free():
            s = os.statvfs(self.root)
            return s.f_bavail * s.f_frsize
        before = free()
        if before > 256 << 20:
            raise RuntimeError(f"room: {before} bytes free; generated only under a size limit")
        path = self.p("room.tmp")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            rc = libc.fallocate64(fd, mode, 0, before + delta)
            err = None if rc == 0 else errno.errorcode.get(ctypes.get_errno())
            want = before + delta if err is None and mode == 0 else 0
            return (err, os.fstat(fd).st_size == want, err is None or free() == before)
        finally:
            os.close(fd)
            os.unlink(path)

    def run(self, op):
        try:
            return ("ok", self._run(op))
        except OSError as e:
            return ("err", errno.errorcode.get(e.errno, e.errno))

    def _run(self, op):
        name, *a = op
        if name == "open":
            slot, rel, flags, mode = a
            fl = os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: never block on a fifo
            for part in flags.split("|"):
                fl |= dict(OPEN_FLAGS + OPEN_MODS)[part]
            if self.fds[slot] is not None:
                os.close(self.fds[slot])
                self.fds[slot] = None
            if self.kernel and not fl & (os.O_WRONLY | os.O_RDWR):
                self._kernel_copy_up(rel, fl)
            fd = os.open(self.p(rel), fl, mode)
            self.fds[slot] = fd
            return _norm_stat(os.fstat(fd))
        if name == "close":
            fd = self.fd(a[0])
            self.fds[a[0]] = None
            os.close(fd)
            return None
        if name == "fstat":
            fd = self.fd(a[0])
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                return _norm_stat(st)
            return _norm_stat(st) + (("gone",) if self._dir_gone(fd, st) else ())
        if name == "opendir":
            slot, rel = a
            if self.fds[slot] is not None:
                os.close(self.fds[slot])
                self.fds[slot] = None
            fd = os.open(self.p(rel), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.fds[slot] = fd
            return _norm_stat(os.fstat(fd))
        if name == "setacl":
            return self._setacl(*a)
        if name == "fsync":
            os.fsync(self.fd(a[0]))
            return None
        if name == "write":
            slot, dseed, n = a
            fd = self.fd(slot)
            return (os.write(fd, _data(dseed, n)), os.lseek(fd, 0, os.SEEK_CUR))
        if name == "pwrite":
            slot, off, dseed, n = a
            return os.pwrite(self.fd(slot), _data(dseed, n), off)
        if name == "read":
            fd = self.fd(a[0])
            return (_digest(os.read(fd, a[1])), os.lseek(fd, 0, os.SEEK_CUR))
        if name == "pread":
            return _digest(os.pread(self.fd(a[0]), a[2], a[1]))
        if name == "ftruncate":
            fd = self.fd(a[0])
            os.ftruncate(fd, a[1])
            return os.fstat(fd).st_size
        if name == "fallocate":
            slot, mode, off, ln = a
            fd = self.fd(slot)
            _check(libc.fallocate64(fd, mode, off, ln))
            return os.fstat(fd).st_size
        if name == "room":
            return self._room(*a)
        if name == "wfile":
            rel, off, dseed, n, trunc = a
            fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK |
                         (os.O_TRUNC if trunc else 0), 0o644)
            try:
                return os.pwrite(fd, _data(dseed, n), off)
            finally:
                os.close(fd)
        if name == "rfile":
            fd = os.open(self.p(a[0]), os.O_RDONLY | os.O_NONBLOCK)
            try:
                out = b""
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    out += b
                return _digest(out)
            finally:
                os.close(fd)
        if name == "truncate":
            os.truncate(self.p(a[0]), a[1])
            return None
        if name == "mkdir":
            os.mkdir(self.p(a[0]), a[1])
            return _norm_stat(os.lstat(self.p(a[0])))
        if name == "rmdir":
            return os.rmdir(self.p(a[0]))
        if name == "unlink":
            return os.unlink(self.p(a[0]))
        if name == "rename":
            old, new, flags = a
            _check(libc.renameat2(-100, os.fsencode(self.p(old)), -100,
                                  os.fsencode(self.p(new)), flags))
            return None
        if name == "link":
            os.link(self.p(a[0]), self.p(a[1]), follow_symlinks=False)
            return _norm_stat(os.lstat(self.p(a[1])))
        if name == "symlink":
            return os.symlink(a[0], self.p(a[1]))
        if name == "readlink":
            return os.readlink(self.p(a[0]))
        if name == "mkfifo":
            return os.mkfifo(self.p(a[0]), 0o640)
        if name == "chmod":
            os.chmod(self.p(a[0]), a[1])
            return _norm_stat(os.stat(self.p(a[0])))
        if name == "chown":
            rel, uid, gid, nofollow = a
            os.chown(self.p(rel), uid, gid, follow_symlinks=not nofollow)
            return _norm_stat(os.lstat(self.p(rel)) if nofollow else os.stat(self.p(rel)))
        if name == "utimens":
            rel, at, mt, nofollow = a
            ts = lambda v: H.UTIME_NOW if v == "NOW" else H.UTIME_OMIT if v == "OMIT" else v  # noqa: E731
            H.utimensat(self.p(rel), ts(at), ts(mt), follow=not nofollow)
            st = os.lstat(self.p(rel)) if nofollow else os.stat(self.p(rel))
            return (st.st_atime_ns if isinstance(at, tuple) else None,
                    st.st_mtime_ns if isinstance(mt, tuple) else None)
        if name == "setxattr":
            rel, key, dseed, n, flags, nofollow = a
            os.setxattr(self.p(rel), key, _data(dseed, n), flags, follow_symlinks=not nofollow)
            return None
        if name == "removexattr":
            return os.removexattr(self.p(a[0]), a[1])
        if name == "getxattr":
            return os.getxattr(self.p(a[0]), a[1])
        if name == "listxattr":
            return sorted(x for x in os.listxattr(self.p(a[0])) if x.startswith("user."))
        if name == "readdir":
            with os.scandir(self.p(a[0])) as it:
                return sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        if name == "stat":
            rel, follow = a
            return _norm_stat(os.stat(self.p(rel)) if follow else os.lstat(self.p(rel)))
        raise ValueError(name)


# --------------------------------------------------------------------------
# The final tree


def final_view(root):
    """{relpath: record} for everything visible, plus hard-link groups."""
    out = {}
    inodes = {}
    for rel, st in H.walk_stats(root).items():
        p = os.path.join(root, rel) if rel != "." else root
        r = {"stat": _norm_stat(st)}
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                r["data"] = _digest(f.read())
        elif stat.S_ISLNK(st.st_mode):
            r["target"] = os.readlink(p)
        if not stat.S_ISLNK(st.st_mode):
            r["xattrs"] = sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                 for n in os.listxattr(p, follow_symlinks=False)
                                 if n.startswith("user.") or n == ACL_ACCESS)
        out[rel] = r
        if not stat.S_ISDIR(st.st_mode):
            inodes.setdefault(st.st_ino, []).append(rel)
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return out, groups


def view_diff(vk, vm, limit=30):
    (k, gk), (m, gm) = vk, vm
    out = H.map_diff(k, m, "  only on kernel:     {p} {v}", "  only on memoverlay: {p} {v}",
                     "  differs: {p} (kernel, memoverlay): {ch}", limit, more="  ...")
    if gk != gm:
        out.append(f"  hard-link groups: kernel {gk} memoverlay {gm}")
    return out


# --------------------------------------------------------------------------
# Mounting


class Mounts:
    """Fresh memoverlay + kernel overlayfs mounts for one run, under WORK.

    mount_mem(layers) -> (root, unmount_fn) may be supplied (the pytest
    fixture's, which also checks sanitizer logs); otherwise the daemon EXE is
    started directly."""

    def __init__(self, work, exe=None, opts="", mount_mem=None, size=None):
        """SIZE: the same upper size limit (bytes) on both sides: memoverlay's
        size= (added to OPTS here when the daemon is started directly) and
        the kernel overlay's tmpfs upper; it lets the generator ask for
        fallocates at the edge of the free space."""
        self.work = work
        self.exe = exe
        self.size = size
        self.opts = opts
        self.mount_mem = mount_mem
        self.n = 0

    def _dir(self, stem):
        self.n += 1
        p = os.path.join(self.work, f"{stem}{self.n}")
        os.makedirs(p)
        return p

    def mem(self, layers):
        if self.mount_mem:
            return self.mount_mem(layers)
        mp = self._dir("mem")
        opts = ",".join(filter(None, [self.opts, f"size={self.size}" if self.size else ""]))
        lo = "lowerdir=" + ":".join(l.replace(":", "\\:") for l in layers) + ("," + opts if opts else "")
        san = os.path.join(self.work, "san")
        os.makedirs(san, exist_ok=True)
        env = dict(os.environ,
                   ASAN_OPTIONS=f"log_path={san}/asan:detect_leaks=1",
                   UBSAN_OPTIONS=f"log_path={san}/ubsan:print_stacktrace=1:halt_on_error=1")
        r = subprocess.run([self.exe, mp, "-o", lo], capture_output=True, text=True, timeout=60,
                           env=env)
        if r.returncode != 0:
            raise RuntimeError(f"memoverlay failed to mount: {r.stderr}")
        pids = H.daemon_pids(mp)

        def umount():
            H.unmount(mp)
            alive = H.wait_pids_gone(pids, H.DEADLINE)
            if alive:
                raise RuntimeError(f"daemon {alive} did not exit after unmount")
            if not pids:
                raise RuntimeError("daemon died during the run (crash?)")
            for f in sorted(os.listdir(san)):
                txt = open(os.path.join(san, f), errors="replace").read()
                os.unlink(os.path.join(san, f))
                raise RuntimeError(f"sanitizer report {f}:\n{txt[:6000]}")
        return mp, umount

    def kernel(self, layers):
        base = self._dir("kovl")
        undo = contextlib.ExitStack()
        mp = undo.enter_context(H.kernel_overlay(layers, os.path.join(base, "merged"),
                                                 writable=True, scratch=base, size=self.size))
        return os.fspath(mp), undo.close


# --------------------------------------------------------------------------
# One run


class Result:
    def __init__(self):
        self.step_diff = None     # (index, op, kernel result, memoverlay result)
        self.tree_diff = None     # [lines]
        self.lower_diff = None    # [lines]
        self.error = None         # harness/daemon trouble (str)

    @property
    def failed(self):
        return bool(self.step_diff or self.tree_diff or self.lower_diff or self.error)

    def signature(self):
        if self.step_diff:
            return ("step", self.step_diff[1][0])
        if self.tree_diff:
            return ("tree",)
        if self.lower_diff:
            return ("lower",)
        return ("error",) if self.error else None

    def describe(self):
        out = []
        if self.step_diff:
            i, op, k, m = self.step_diff
            out.append(f"  step {i}: {fmt_op(op)}\n    kernel:     {k}\n    memoverlay: {m}")
        if self.tree_diff:
            out.append("  final tree differs:\n" + "\n".join(self.tree_diff))
        if self.lower_diff:
            out.append("  lower tree changed:\n" + "\n".join(self.lower_diff))
        if self.error:
            out.append("  error: " + self.error)
        return "\n".join(out)


def make_lowers(work, seed, nlayers=1, hardlinks=True):
    """Two identical sets of NLAYERS lower layers (top first): memoverlay's, the kernel's."""
    out = []
    for side in ("mem", "kernel"):
        d = os.path.join(work, "lower-" + side)
        if os.path.exists(d):
            shutil.rmtree(d)
        ls = []
        for i in range(nlayers):
            l = os.path.join(d, f"l{i}")
            os.makedirs(l)
            build_lower(l, seed * 16 + i, hardlinks)
            ls.append(l)
        out.append(ls)
    return out


def run_ops(mounts, lm, lk, ops, stop_at_first=True):
    res = Result()
    snaps = [(l, H.tree_records(l)) for l in lm + lk]
    um = uk = None
    rm = rk = None
    try:
        mroot, um = mounts.mem(lm)
        kroot, uk = mounts.kernel(lk)
        rm, rk = Runner(os.fspath(mroot)), Runner(os.fspath(kroot), kernel=True)
        for i, op in enumerate(ops):
            a = rk.run(op)
            b = rm.run(op)
            if a != b:
                res.step_diff = (i, op, a, b)
                if stop_at_first:
                    break
        rm.close_all()
        rk.close_all()
        rm = rk = None
        if not res.step_diff:
            d = view_diff(final_view(os.fspath(kroot)), final_view(os.fspath(mroot)))
            if d:
                res.tree_diff = d
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        res.error = repr(e)
    finally:
        for r in (rm, rk):
            if r:
                r.close_all()
        for u in (um, uk):
            if u:
                try:
                    u()
                except Exception as e:  # noqa: BLE001
                    res.error = (res.error or "") + f" unmount: {e!r}"
    for l, snap in snaps:
        after = H.tree_records(l)
        if after != snap:
            res.lower_diff = (res.lower_diff or []) + [l] + H.tree_diff(snap, after)
    return res


def shrink(mounts, work, seed, ops, sig, budget_s=180, log=print, nlayers=1, hardlinks=True):
    """ddmin over OPS keeping a failure with the same signature."""
    deadline = time.monotonic() + budget_s
    tests = [0]

    def fails(sub):
        tests[0] += 1
        lm, lk = make_lowers(work, seed, nlayers, hardlinks)
        r = run_ops(mounts, lm, lk, sub)
        return r.failed and r.signature() == sig, r

    n = 2
    cur = list(ops)
    last = None
    while len(cur) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(cur) // n)
        subsets = [cur[i:i + chunk] for i in range(0, len(cur), chunk)]
        reduced = False
        for i in range(len(subsets)):
            if time.monotonic() > deadline:
                break
            comp = [op for j, s in enumerate(subsets) if j != i for op in s]
            ok, r = fails(comp)
            if ok:
                cur, last = comp, r
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(cur):
                break
            n = min(len(cur), n * 2)
    if last is None:
        _, last = fails(cur)
    log(f"  (shrunk to {len(cur)} ops in {tests[0]} runs)")
    return cur, last


def check_seed(seed, steps, mounts, work, do_shrink=True, log=print, shrink_budget=180,
               nlayers=1, hardlinks=True):
    """Runs one seed. Returns None on success, else a report string."""
    lm, lk = make_lowers(work, seed, nlayers, hardlinks)
    pool = path_pool(lm)
    ops = gen_ops(seed, steps, pool, limited=mounts.size is not None)
    r = run_ops(mounts, lm, lk, ops)
    if not r.failed:
        return None
    report = [f"seed {seed}: memoverlay differs from kernel overlayfs", r.describe()]
    sig = r.signature()
    if sig and sig != ("error",) and sig != ("lower",) and do_shrink:
        if r.step_diff:
            ops = ops[:r.step_diff[0] + 1]
        small, r2 = shrink(mounts, work, seed, ops, sig, budget_s=shrink_budget, log=log,
                           nlayers=nlayers, hardlinks=hardlinks)
        report.append(f"minimal sequence ({len(small)} ops) on the lower tree of seed {seed}:")
        report += [f"    {fmt_op(op)}" for op in small]
        report.append("  which gives:\n" + r2.describe())
        for i, l in enumerate(lm):
            report.append(f"  lower layer {i} (0 = top): " + describe_lower(l))
    extra = (f" --layers {nlayers}" if nlayers != 1 else "") + \
        ("" if hardlinks else " --no-lower-hardlinks") + \
        (f" --opts {mounts.opts}" if mounts.opts else "") + \
        (f" --size {mounts.size}" if mounts.size else "") + \
        (f" --exe {mounts.exe}" if mounts.exe else "")
    report.append(f"reproduce: python3 tests/harness/difftest.py --first-seed {seed} "
                  f"--seeds 1 --steps {steps}{extra}")
    return "\n".join(report)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--exe", default=os.path.join(REPO, "build", "fs", "memoverlay"))
    ap.add_argument("--opts", default="", help="extra memoverlay -o options")
    ap.add_argument("--layers", type=int, default=1, help="number of lower layers")
    ap.add_argument("--size", type=int, help="the same upper size limit in bytes on both sides "
                    "(memoverlay size=, the kernel's tmpfs upper); adds fallocates at the edge "
                    "of the free space to the operations")
    ap.add_argument("--no-lower-hardlinks", action="store_true",
                    help="lower trees without hard links (to explore past a hard-link bug)")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--show", action="store_true", help="print the sequence of the first seed")
    ap.add_argument("--keep-going", action="store_true", help="continue after a failing seed")
    a = ap.parse_args(argv)
    if a.show:
        with tempfile.TemporaryDirectory() as t:
            _, ls = make_lowers(t, a.first_seed, a.layers, not a.no_lower_hardlinks)
            for i, l in enumerate(ls):
                print(f"lower layer {i}:", describe_lower(l))
            for i, op in enumerate(gen_ops(a.first_seed, a.steps, path_pool(ls),
                                           limited=a.size is not None)):
                print(f"{i:4d} {fmt_op(op)}")
        return 0
    if os.geteuid() != 0:
        print("difftest: must run as root (kernel overlayfs)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="difftest-")
    failed = 0
    t0 = time.monotonic()
    try:
        mounts = Mounts(work, exe=os.path.abspath(a.exe), opts=a.opts, size=a.size)
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            rep = check_seed(seed, a.steps, mounts, work, not a.no_shrink,
                             nlayers=a.layers, hardlinks=not a.no_lower_hardlinks)
            if rep:
                failed += 1
                print(rep, flush=True)
                if not a.keep_going:
                    break
            else:
                print(f"seed {seed}: ok", flush=True)
    finally:
        for mp in sorted(H.mounts_under(work), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{failed} failing seed(s); {time.monotonic() - t0:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

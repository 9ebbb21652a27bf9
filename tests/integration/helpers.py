"""Helpers for the memoverlay integration tests: building lower trees,
checksumming them, reading directories through libc, and finding mounts and
daemon processes."""

import contextlib
import ctypes
import ctypes.util
import difflib
import errno
import hashlib
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

# How long to wait for something that must happen (a daemon to exit, a mount
# to go, an asynchronous RELEASE to free space): generous, so that only a
# hang, never a slow or loaded machine, reaches it. No test asserts that
# anything is fast.
DEADLINE = 60.0

# --------------------------------------------------------------------------
# Building lower layers


def write(path, data=b"", mode=None):
    """Create a regular file (and its parents) with DATA (str or bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def rd(path):
    """The whole content of the file at PATH, as bytes."""
    with open(path, "rb") as f:
        return f.read()


def mkdir(path, mode=None):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        os.chmod(path, mode)
    return path


def symlink(path, target):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


def whiteout_chr(path):
    """Overlayfs-style whiteout: a character device 0/0 named like the victim."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    return path


def whiteout_wh(path):
    """aufs/OCI-style whiteout: an empty file `.wh.NAME` beside the victim."""
    path = Path(path)
    return write(path.parent / (".wh." + path.name))


def opaque_xattr(path, namespace="trusted"):
    """Mark directory PATH opaque with <namespace>.overlay.opaque=y."""
    path = mkdir(path)
    os.setxattr(path, namespace + ".overlay.opaque", b"y")
    return path


def opaque_wh(path):
    """Mark directory PATH opaque with a `.wh..wh..opq` file in it."""
    path = mkdir(path)
    write(path / ".wh..wh..opq")
    return path


def bind_socket(path):
    """Create a unix socket node at PATH (works for long paths via chdir)."""
    import socket
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(path.parent)
        s.bind(path.name)
    finally:
        os.chdir(old)
        s.close()
    return path


# --------------------------------------------------------------------------
# Checksumming a tree (proves a lower layer is byte-for-byte unchanged)


def xattr_list(p, hide=(), strict=False):
    """[(name, value)] of P's xattrs (P itself, never a symlink's target),
    sorted by name, leaving out names that start with a prefix in HIDE.
    Lenient (the default): no xattr support on P (ENOTSUP, EPERM from
    listxattr) is an empty list, and a value that cannot be read is
    ("error", errno). STRICT: every error is raised."""
    out = []
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if not strict and e.errno in (errno.ENOTSUP, errno.EPERM):
            return out
        raise
    for n in sorted(names):
        if n.startswith(tuple(hide)):
            continue
        try:
            v = os.getxattr(p, n, follow_symlinks=False)
        except OSError as e:
            if strict:
                raise
            v = ("error", e.errno)
        out.append((n, v))
    return out


def _file_digest(p):
    h = hashlib.sha256()
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)
    try:
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
    finally:
        os.close(fd)
    return h.hexdigest()


def tree_records(root):
    """One record per entry under ROOT (root included), never following
    symlinks: name, type, mode, uid, gid, size, mtime, ctime, rdev, nlink,
    content digest, symlink target, xattrs. Sorted by relative path."""
    root = os.fspath(root)
    recs = []

    def rec(path, rel):
        st = os.lstat(path)
        r = {
            "path": rel,
            "mode": oct(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "size": st.st_size,
            "mtime": st.st_mtime_ns,
            "ctime": st.st_ctime_ns,
            "nlink": st.st_nlink,
            "rdev": st.st_rdev,
            "xattrs": xattr_list(path),
        }
        if stat.S_ISREG(st.st_mode):
            r["sha256"] = _file_digest(path)
        elif stat.S_ISLNK(st.st_mode):
            r["target"] = os.readlink(path)
        recs.append(r)
        return st

    st = rec(root, ".")
    if not stat.S_ISDIR(st.st_mode):
        return recs
    stack = [(root, "")]
    while stack:
        d, rel = stack.pop()
        with os.scandir(d) as it:
            ents = sorted(it, key=lambda e: e.name)
        for e in ents:
            r = rel + e.name
            s = rec(e.path, r)
            if stat.S_ISDIR(s.st_mode):
                stack.append((e.path, r + "/"))
    recs.sort(key=lambda r: r["path"])
    return recs


def map_diff(a, b, gone, new, changed, limit, more="..."):
    """Lines naming what differs between two {path: {field: value}} maps, at
    most `limit` (then `more`). Templates: `gone` for a path only in a, `new`
    for one only in b ({p} the path, {v} its fields), `changed` for one whose
    fields differ ({ch}: {field: (in a, in b)})."""
    out = []
    for p in sorted(set(a) | set(b)):
        if p not in b:
            out.append(gone.format(p=p, v=a[p]))
        elif p not in a:
            out.append(new.format(p=p, v=b[p]))
        elif a[p] != b[p]:
            ch = {k: (a[p].get(k), b[p].get(k)) for k in set(a[p]) | set(b[p])
                  if a[p].get(k) != b[p].get(k)}
            out.append(changed.format(p=p, ch=ch))
        if len(out) >= limit:
            out.append(more)
            break
    return out


def tree_diff(before, after, limit=40):
    """Human-readable differences between two tree_records() lists."""
    return map_diff({r["path"]: r for r in before}, {r["path"]: r for r in after},
                    "removed: {p}", "added:   {p} {v}", "changed: {p} {ch}", limit)


# --------------------------------------------------------------------------
# Mounts and processes


def _unescape_mountinfo(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mountinfo(pid="self"):
    """List of dicts (mountpoint, fstype, source, mount_opts, super_opts):
    the mounts PID (default: this process) sees."""
    res = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            lf = left.split(" ")
            rf = right.split(" ")
            res.append({
                "dev": lf[2],  # MAJ:MIN
                "mountpoint": _unescape_mountinfo(lf[4]),
                "mount_opts": lf[5].split(","),
                "fstype": rf[0],
                "source": _unescape_mountinfo(rf[1]),
                "super_opts": rf[2].split(",") if len(rf) > 2 else [],
            })
    return res


def mounts_at(path):
    path = os.path.realpath(os.fspath(path))
    return [m for m in mountinfo() if m["mountpoint"] == path]


def bdi_knobs(mountpoint):
    """The dirty page limits of the mount on MOUNTPOINT (its bdi, as sysfs shows it)."""
    dev = mounts_at(mountpoint)[-1]["dev"]
    return {k: int(open(f"/sys/class/bdi/{dev}/{k}").read()) for k in ("max_ratio", "strict_limit")}


def is_mounted(path):
    return bool(mounts_at(path))


def mounts_under(prefix):
    prefix = os.path.realpath(os.fspath(prefix)).rstrip("/") + "/"
    return [m["mountpoint"] for m in mountinfo()
            if (m["mountpoint"] + "/").startswith(prefix)]


def proc_cmdlines():
    """Yield (pid, argv list) for every readable process."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if raw:
            yield int(d), [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def daemon_pids(mountpoint, exe_name="memoverlay", resolve=True):
    """PIDs of memoverlay processes whose argv holds MOUNTPOINT. RESOLVE=False
    touches no file system path (safe while the mount hangs)."""
    mp = os.fspath(mountpoint)
    variants = {mp, mp.rstrip("/")}
    if resolve:
        variants.add(os.path.realpath(mp))
    me = os.getpid()
    pids = []
    for pid, argv in proc_cmdlines():
        if pid == me:
            continue
        if not any(os.path.basename(a) == exe_name for a in argv[:1]):
            continue
        if any(a in variants for a in argv[1:]):
            if pid_alive(pid):
                pids.append(pid)
    return pids


def pid_alive(pid):
    """True if PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    state = data.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_pids_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def unmount(path, timeout=DEADLINE):
    """Unmount PATH: fusermount3 -u, then umount, then umount -l. Returns a
    list of notes describing what had to be done (empty if the first try
    worked or nothing was mounted)."""
    notes = []
    path = os.fspath(path)
    if not is_mounted(path):
        return notes
    for cmd in (["fusermount3", "-u", "-q", path], ["umount", path], ["umount", "-l", path]):
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)
            if r.returncode == 0 and not is_mounted(path):
                return notes
            notes.append(f"{' '.join(cmd)} -> rc {r.returncode}: {r.stderr.strip()}")
        except subprocess.TimeoutExpired:
            notes.append(f"{' '.join(cmd)} timed out")
        if not is_mounted(path):
            return notes
    return notes


@contextlib.contextmanager
def kernel_overlay(layers, mountpoint, writable=False, scratch=None, size=None):
    """Kernel overlayfs of LAYERS (top first) mounted at MOUNTPOINT, as a
    reference; unmounted (and its tmpfs) when the block ends, however it ends.

    Read-only (lowerdir only) unless WRITABLE: then the upper and work
    directories are on a tmpfs of their own, with redirect_dir=on,index=on,
    and the upper root gets the top layer root's owner and mode, as in
    memoverlay. SCRATCH is where what the mount needs besides the layers goes
    (that tmpfs; an empty second lower layer, which the kernel wants without
    an upper); default: a directory next to MOUNTPOINT. Nothing is written
    into a layer. SIZE (bytes) limits the writable upper's tmpfs. A failed
    mount raises subprocess.CalledProcessError (its stderr a str)."""
    layers = [os.fspath(p) for p in layers]
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    scratch = Path(scratch) if scratch else mountpoint.parent / (mountpoint.name + ".kovl")
    extra = []

    def run_mount(*args):
        subprocess.run(["mount", *map(os.fspath, args)], check=True, timeout=30,
                       capture_output=True, text=True)

    with contextlib.ExitStack() as undo:
        if writable:
            t = scratch / "tmpfs"
            t.mkdir(parents=True, exist_ok=True)
            run_mount("-t", "tmpfs", *(["-o", f"size={size}"] if size else []), "tmpfs", t)
            undo.callback(unmount, t)
            upper, work = t / "upper", t / "work"
            upper.mkdir()
            work.mkdir()
            st = os.stat(layers[0])
            os.chown(upper, st.st_uid, st.st_gid)
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            extra = [f"upperdir={upper}", f"workdir={work}", "redirect_dir=on", "index=on"]
        elif len(layers) < 2:
            empty = scratch / "empty-lower"
            empty.mkdir(parents=True, exist_ok=True)
            layers.append(os.fspath(empty))
        opts = ",".join(["lowerdir=" + ":".join(l.replace(":", "\\:") for l in layers)] + extra)
        run_mount("-t", "overlay", "overlay", "-o", opts, mountpoint)
        undo.callback(unmount, mountpoint)
        yield mountpoint


# --------------------------------------------------------------------------
# Directory reading through libc (telldir/seekdir, raw entries incl. . and ..)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _Dirent(ctypes.Structure):  # glibc x86_64/aarch64 struct dirent (== dirent64)
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent)
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.restype = None
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.rewinddir.restype = None
_libc.rewinddir.argtypes = [ctypes.c_void_p]
_libc.closedir.restype = ctypes.c_int
_libc.closedir.argtypes = [ctypes.c_void_p]


class Dir:
    """A libc DIR* stream: for e in Dir(p): e == (name, d_ino, d_type)."""

    def __init__(self, path):
        self.d = _libc.opendir(os.fsencode(os.fspath(path)))
        if not self.d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), os.fspath(path))

    def read(self):
        ctypes.set_errno(0)
        p = _libc.readdir64(self.d)
        if not p:
            e = ctypes.get_errno()
            if e:
                raise OSError(e, os.strerror(e))
            return None
        ent = p.contents
        return (ent.d_name.decode(errors="surrogateescape"), ent.d_ino, ent.d_type)

    def tell(self):
        return _libc.telldir(self.d)

    def seek(self, pos):
        _libc.seekdir(self.d, pos)

    def rewind(self):
        _libc.rewinddir(self.d)

    def close(self):
        if self.d:
            _libc.closedir(self.d)
            self.d = None

    def __iter__(self):
        while True:
            e = self.read()
            if e is None:
                return
            yield e

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def raw_listdir(path):
    """All names a libc readdir returns for PATH, including . and .."""
    with Dir(path) as d:
        return [e[0] for e in d]


# --------------------------------------------------------------------------
# Misc


def unified(a, b, name_a="expected", name_b="actual", limit=60):
    lines = list(difflib.unified_diff(a, b, name_a, name_b, lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)


def walk_stats(root):
    """{relpath: os.stat_result} for every entry below ROOT (root = '.')."""
    root = os.fspath(root)
    out = {".": os.lstat(root)}
    stack = [(root, "")]
    while stack:
        d, rel = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                r = rel + e.name
                st = os.lstat(e.path)
                out[r] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append((e.path, r + "/"))
    return out


def view(root, mtimes=True, xattrs=True, nlink=True):
    """What a user sees below ROOT: {relpath: dict} with type, permission
    bits, owner, size (non-dirs), mtime, nlink (non-dirs), content digest,
    symlink target, rdev, xattrs. Inode numbers and st_dev are left out."""
    out = {}
    for rel, st in walk_stats(root).items():
        p = os.path.join(os.fspath(root), rel) if rel != "." else os.fspath(root)
        v = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
             "uid": st.st_uid, "gid": st.st_gid}
        if not stat.S_ISDIR(st.st_mode):
            v["size"] = st.st_size
            if nlink:
                v["nlink"] = st.st_nlink
        if mtimes:
            v["mtime"] = st.st_mtime_ns
        if stat.S_ISREG(st.st_mode):
            v["sha256"] = _file_digest(p)
        elif stat.S_ISLNK(st.st_mode):
            v["target"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            v["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if xattrs:
            v["xattrs"] = xattr_list(p)
        out[rel] = v
    return out


def view_diff(expected, actual, limit=40):
    return "\n".join(map_diff(expected, actual, "missing on mount: {p} {v}",
                              "unexpected on mount: {p} {v}",
                              "differs: {p} (expected, actual): {ch}", limit))


def contents(root):
    """{relpath: bytes | ('dir',) | ('link', target) | ('other', fmt)} below ROOT."""
    out = {}
    for rel, st in walk_stats(root).items():
        if rel == ".":
            continue
        p = os.path.join(os.fspath(root), rel)
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                out[rel] = f.read()
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir",)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        else:
            out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


# --------------------------------------------------------------------------
# Write-side syscalls not in the os module (added for the test_upper_* files)

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

_libc.renameat2.restype = ctypes.c_int
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fallocate64.restype = ctypes.c_int
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.restype = ctypes.c_int
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), what)


def renameat2(old, new, flags=0):
    """renameat2(2) with FLAGS (RENAME_NOREPLACE, RENAME_EXCHANGE); raises OSError."""
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(os.fspath(old)), AT_FDCWD,
                         os.fsencode(os.fspath(new)), flags)
    _check(rc, f"renameat2({old}, {new}, {flags})")


def fallocate(fd, mode, offset, length):
    """fallocate(2); raises OSError."""
    _check(_libc.fallocate64(fd, mode, offset, length), f"fallocate(mode={mode:#x})")


def utimensat(path, atime, mtime, follow=True):
    """utimensat(2): ATIME/MTIME are (sec, nsec) or UTIME_NOW / UTIME_OMIT."""
    def ts(v):
        if v in (UTIME_NOW, UTIME_OMIT):
            return _Timespec(0, v)
        return _Timespec(v[0], v[1])
    arr = (_Timespec * 2)(ts(atime), ts(mtime))
    flags = 0 if follow else 0x100  # AT_SYMLINK_NOFOLLOW
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(os.fspath(path)), arr, flags),
           f"utimensat({path})")


def errno_of(fn, *args, **kw):
    """Call FN; return 0 if it succeeded, else the OSError's errno."""
    try:
        fn(*args, **kw)
        return 0
    except OSError as e:
        return e.errno


def statfs_used(path):
    """Bytes used according to statvfs(PATH)."""
    s = os.statvfs(path)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def rss_kib(pid):
    """VmRSS of PID in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def memfds(pid):
    """{(st_dev, st_ino): (fd link, os.stat_result)} of the memfds PID holds
    open (fd links '/memfd:NAME (deleted)'). OSError if PID is gone."""
    out = {}
    d = f"/proc/{pid}/fd"
    for fd in os.listdir(d):
        try:
            link = os.readlink(f"{d}/{fd}")
            if not link.startswith("/memfd:"):
                continue
            st = os.stat(f"{d}/{fd}")
        except FileNotFoundError:   # closed meanwhile
            continue
        out[(st.st_dev, st.st_ino)] = (link, st)
    return out


def memfd_holders(idents):
    """Every process on the machine that still holds one of the memfds
    IDENTS ((st_dev, st_ino) pairs) open (/proc/*/fd) or mapped
    (/proc/*/map_files): a list of (pid, comm, where, link). Processes that
    exit or close things during the scan are skipped. (Memfd inode numbers
    come from a kernel counter: an identity does not come back for a newer
    memfd.)"""
    idents = set(idents)
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        for sub in ("fd", "map_files"):
            base = f"/proc/{d}/{sub}"
            try:
                names = os.listdir(base)
            except OSError:         # gone, or a kernel thread
                continue
            for n in names:
                try:
                    link = os.readlink(f"{base}/{n}")
                    if not link.startswith("/memfd:"):
                        continue
                    st = os.stat(f"{base}/{n}")
                except OSError:     # closed, unmapped or exited meanwhile
                    continue
                if (st.st_dev, st.st_ino) in idents:
                    found.append((int(d), proc_comm(int(d)), f"{sub}/{n}", link))
    return found


# --------------------------------------------------------------------------
# Rootless, hardening and runtime tests (test_rootless, test_hardening,
# test_runtimes): a plain test user, world-reachable scratch directories,
# /proc/PID/status, user namespaces.

TEST_USER = "mo_test"

CAP_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]


def ensure_test_user(name=TEST_USER):
    """Creates the plain test user if missing (kept between runs) and makes
    /dev/fuse mode 0666 the way distributions ship it. Returns (uid, gid, home)."""
    import pwd
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        r = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True,
                           text=True, timeout=60)
        if r.returncode not in (0, 9):  # 9: exists (a concurrent creation)
            raise RuntimeError(f"useradd {name}: {r.stderr.strip()}")
        pw = pwd.getpwnam(name)
    if stat.S_IMODE(os.stat("/dev/fuse").st_mode) != 0o666:
        os.chmod("/dev/fuse", 0o666)
    return pw.pw_uid, pw.pw_gid, pw.pw_dir


def as_user(uid, gid):
    """argv prefix running a command as UID/GID with the user's groups."""
    import pwd
    try:
        pwd.getpwuid(uid)
        groups = "--init-groups"
    except KeyError:          # a bare id (a subordinate uid): no groups
        groups = "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", groups, "--"]


def daemon_env(san):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = f"log_path={san}/asan:detect_leaks=1"
    env["UBSAN_OPTIONS"] = f"log_path={san}/ubsan:print_stacktrace=1:halt_on_error=1"
    return env


def san_logs(san):
    out = []
    if os.path.isdir(san):
        for f in sorted(os.listdir(san)):
            out.append(f"{san}/{f}:\n" + open(os.path.join(san, f), errors="replace").read()[:6000])
    return out


class UserSetup:
    """A lower tree owned by the test user and a mount point, in SCRATC"""

    def __init__(self, build, user, scratch):
        self.build, self.user, self.d = build, user, scratch
        self.lower = mkdir(scratch / "lower")
        write(self.lower / "hello", "world\n")
        write(self.lower / "dir/data", "lower data\n")
        write(self.lower / "dir/doomed", "x")
        mkdir(self.lower / "dir/sub")
        for p in [self.lower, *self.lower.rglob("*")]:
            os.lchown(p, user.uid, user.gid)
        self.mnt = mkdir(scratch / "mnt")
        os.chown(self.mnt, user.uid, user.gid)
        self.san = mkdir(scratch / "san")
        os.chmod(self.san, 0o777)
        self.before = tree_records(self.lower)

    def argv(self, opts=""):
        o = f"lowerdir={self.lower}" + ("," + opts if opts else "")
        return [*self.build.cmd, "-o", o, str(self.mnt)]

    def start(self, opts=""):
        r = subprocess.run(self.user.prefix + self.argv(opts), capture_output=True, text=True,
                           timeout=DEADLINE, env=daemon_env(self.san), stdin=subprocess.DEVNULL)
        return r

    def mount(self, opts=""):
        r = self.start(opts)
        assert r.returncode == 0, f"plain-user mount failed ({r.returncode}): {r.stderr}"
        assert is_mounted(self.mnt), f"exit 0 but not mounted; stderr {r.stderr}"
        info = mounts_at(self.mnt)[-1]
        assert info["fstype"].startswith("fuse"), info
        assert f"user_id={self.user.uid}" in info["super_opts"], info
        return info

    def sh(self, script, timeout=60, check=True):
        r = subprocess.run(self.user.prefix + ["/bin/sh", "-ec", script], capture_output=True,
                           text=True, timeout=timeout, cwd="/", stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"as {self.user.uid}: {script!r} -> {r.returncode}\n" \
                                      f"stdout {r.stdout}\nstderr {r.stderr}"
        return r

    def pids(self):
        return processes_mentioning(self.d)

    def check_lower(self):
        after = tree_records(self.lower)
        assert after == self.before, "lower changed:\n" + "\n".join(tree_diff(self.before, after))

    def check_san(self):
        logs = san_logs(self.san)
        assert not logs, "\n".join(logs)


def processes_mentioning(prefix):
    """PIDs (not zombies) whose argv mentions a path under PREFIX and whose
    program is memoverlay (the daemon or its mo-unmounter child)."""
    prefix = os.fspath(prefix).rstrip("/") + "/"
    me = os.getpid()
    out = []
    for pid, argv in proc_cmdlines():
        if pid == me or not argv or os.path.basename(argv[0]) != "memoverlay":
            continue
        if any(a.startswith(prefix) or prefix in a for a in argv[1:]) and pid_alive(pid):
            out.append(pid)
    return out


def proc_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def proc_ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def main_daemon_pids(pids):
    """Of PIDS, the daemons proper, not the mo-unmounter helper: that is the
    daemon's child, and right after the start it may not have renamed
    itself yet."""
    return [p for p in pids if proc_comm(p) == "memoverlay" and proc_ppid(p) not in pids]


def kill_and_reap(pids, sig=9, timeout=DEADLINE):
    import signal as _s
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return wait_pids_gone(pids, timeout)


@contextlib.contextmanager
def shared_tmpdir(prefix="mo-shared.", owner=None):
    """A scratch directory in /tmp that other users (a plain test user, a
    user namespace's root) can reach: mode 0755, owned by OWNER (uid, gid).
    At exit: kills memoverlay processes that mention it, lazily unmounts
    anything still mounted below it (in this mount namespace), removes it.
    Yields (path, leftovers) — LEFTOVERS is filled at exit with what had to
    be cleaned up, so a test can check it after the with-block."""
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    if owner:
        os.chown(d, owner[0], owner[1])
    left = []
    try:
        yield d, left
    finally:
        mps = sorted(mounts_under(d), key=len, reverse=True)
        for mp in mps:
            unmount(mp)
        for mp in sorted(mounts_under(d), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30)
        left.extend(f"mounted: {mp}" for mp in mps)
        pids = processes_mentioning(d)
        if pids:
            left.append(f"processes: {pids} {[proc_comm(p) for p in pids]}")
            kill_and_reap(pids)
        shutil.rmtree(d, ignore_errors=True)


def proc_status(pid):
    """/proc/PID/status as {key: value-string}."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def cap_names(hexmask):
    """Names of the capabilities in a CapXxx hex mask from /proc/PID/status."""
    v = int(hexmask, 16)
    return {CAP_NAMES[i] if i < len(CAP_NAMES) else f"CAP{i}"
            for i in range(64) if v >> i & 1}


def nofile_limits(pid):
    """(soft, hard) 'Max open files' of PID; 'unlimited' stays a string."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                conv = [int(x) if x.isdigit() else x for x in parts[3:5]]
                return tuple(conv)
    raise RuntimeError(f"no 'Max open files' for {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def sh_wait_mounted(mnt):
    """A shell line that waits for a daemon started in the background to
    mount MNT (up to 50 s; exit 3 if it never does)."""
    return (f"i=0; until grep -q ' {mnt} ' /proc/self/mounts; do sleep 0.05; i=$((i+1)); "
            f"[ $i -lt 1000 ] || exit 3; done\n")


def wait_for(pred, timeout, step=0.05):
    """Polls PRED until true or TIMEOUT seconds; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def stat_errno_bounded(path, timeout=DEADLINE, user=None):
    """stat(PATH) in a child process (so a hung FUSE mount cannot hang the
    test). Returns 0, an errno, or 'hang' (no answer within TIMEOUT s)."""
    code = ("import os,sys\ntry:\n os.stat(sys.argv[1]); os.listdir(sys.argv[1]); print(0)\n"
            "except OSError as e:\n print(e.errno)\n")
    argv = (user or []) + ["/usr/bin/python3", "-c", code, os.fspath(path)]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang"
    try:
        return int(r.stdout.strip())
    except ValueError:
        return f"?{r.stdout!r}{r.stderr!r}"


def run_in_userns(script, ns_root=(0, 0), count=65536, timeout=60, env=None, cwd=None):
    """Runs SCRIPT (sh -e) as root of a new user + mount namespace whose ids
    0..COUNT-1 map to NS_ROOT (outer uid, outer gid) onwards -- what a
    rootless runtime with subordinate ids sets up (root writes the maps, as
    newuidmap would). The creator runs as the outer NS_ROOT ids, so it is
    uid 0 with full capabilities inside. Returns a CompletedProcess (text);
    on TIMEOUT the whole process group is killed and TimeoutExpired raised."""
    import signal as _s
    r, w = os.pipe()
    wrapper = 'read _ || exit 97; exec </dev/null; exec /bin/sh -e -c "$1"'
    argv = as_user(*ns_root) + ["unshare", "--user", "--mount", "--propagation", "private",
                                "--", "/bin/sh", "-c", wrapper, "sh", script]
    p = subprocess.Popen(argv, stdin=r, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                         start_new_session=True)
    os.close(r)
    try:
        mine = os.readlink("/proc/self/ns/user")
        ok = wait_for(lambda: _ns_of(p.pid) not in (None, mine) or p.poll() is not None,
                      DEADLINE)
        if p.poll() is None and ok:
            with open(f"/proc/{p.pid}/uid_map", "w") as f:
                f.write(f"0 {ns_root[0]} {count}\n")
            with open(f"/proc/{p.pid}/gid_map", "w") as f:
                f.write(f"0 {ns_root[1]} {count}\n")
            os.write(w, b"go\n")
        os.close(w)
        w = None
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, _s.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise
    finally:
        if w is not None:
            os.close(w)
        if p.poll() is None:
            try:
                os.killpg(p.pid, _s.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _ns_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _skip(why):
    import pytest
    pytest.skip(why)


# --------------------------------------------------------------------------
# memory cgroups of the test's own (v2 where the unified hierarchy has the
# memory controller, else v1)


def memory_cgroup_root():
    """(kind, directory for new cgroups) or None."""
    with open("/proc/self/mountinfo") as f:
        mounts = [(l.split()[4], l.split(" - ")[1].split()) for l in f]
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            own["v2" if hid == "0" else ctrls] = path
    for mnt, (fstype, _src, opts) in mounts:
        if fstype == "cgroup2" and "v2" in own:
            d = mnt + own["v2"].rstrip("/")
            ctl = os.path.join(d, "cgroup.subtree_control")
            if os.path.exists(ctl) and "memory" in open(ctl).read():
                return "v2", d
    for mnt, (fstype, _src, opts) in mounts:
        if fstype == "cgroup" and "memory" in opts.split(","):
            path = next((p for k, p in own.items() if "memory" in k.split(",")), None)
            if path is not None:
                return "v1", mnt + path.rstrip("/")
    return None


class MemoryCgroup:
    def __init__(self, limit):
        found = memory_cgroup_root()
        if not found:
            _skip("no memory cgroup controller to make a limited cgroup in "
                        "(neither cgroup v2 with memory delegated nor v1 memory)")
        self.kind, parent = found
        self.path = os.path.join(parent, f"mo-test-{uuid.uuid4().hex[:12]}")
        try:
            os.mkdir(self.path)
        except OSError as e:
            _skip(f"cannot create a memory cgroup under {parent}: {e}")
        limit_file = "memory.max" if self.kind == "v2" else "memory.limit_in_bytes"
        with open(os.path.join(self.path, limit_file), "w") as f:
            f.write(str(limit))

    def wrap(self, argv):
        """ARGV run inside this cgroup."""
        return ["/bin/sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "sh", *argv]

    def oom_kills(self):
        if self.kind == "v2":
            for line in open(os.path.join(self.path, "memory.events")):
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
            return 0
        for line in open(os.path.join(self.path, "memory.oom_control")):
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def usage(self):
        f = "memory.current" if self.kind == "v2" else "memory.usage_in_bytes"
        return int(open(os.path.join(self.path, f)).read())

    def peak(self):
        f = "memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes"
        p = os.path.join(self.path, f)
        return int(open(p).read()) if os.path.exists(p) else None

    def remove(self):
        procs = os.path.join(self.path, "cgroup.procs")
        left = open(procs).read().split() if os.path.exists(procs) else []
        assert not left, f"processes left in {self.path}: {left}"
        os.rmdir(self.path)


def ring_fds(pid):
    """The io_uring file descriptors of process PID: FUSE over io_uring's
    rings (libfuse makes one per CPU; memoverlay itself makes none)."""
    fds = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return fds
    for fd in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]":
                fds.append(int(fd))
        except OSError:
            pass
    return fds

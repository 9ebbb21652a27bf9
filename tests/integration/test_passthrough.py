"""FUSE passthrough (fs/passthrough.c): on a read-only mount, a root daemon
lets the kernel read lower files itself.

How a test knows passthrough is in use: the daemon in the foreground with
-d logs every request it gets; a file read through a backing file brings
OPEN and RELEASE but no READ. Without passthrough every read of a file the
kernel has not cached is a READ.

What must hold with it on (as root, where it is on by default):
- the mount shows the lower data; opens for writing of any kind fail with
  EROFS, and no way of opening a file writes the lower file (the `mount`
  fixture checks every lower layer byte for byte at teardown);
- on a writable mount nothing is backed: a read-only open followed by a
  writable one on another fd works (the kernel would refuse it with EIO
  beside a backed open) and the read-only fd sees what the other wrote;
- passthrough=off, a plain user, and builds on libfuse 3.14 read through
  the daemon, as before.
"""

import errno
import mmap
import os
import re
import subprocess
import time

import pytest

import helpers as H
from helpers import write

pytestmark = pytest.mark.memoverlay_only

MiB = 1024 * 1024


def build_has_passthrough(build):
    r = subprocess.run([str(build.exe), "-V"], capture_output=True, text=True, timeout=30)
    return "passthrough yes" in r.stdout


def kernel_has_passthrough():
    """Linux 6.9+ built with CONFIG_FUSE_PASSTHROUGH (when its config is
    readable; the option defaults to y)."""
    import gzip
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    if (major, minor) < (6, 9):
        return False
    for path, opener in (("/proc/config.gz", gzip.open),
                         (f"/boot/config-{os.uname().release}", open)):
        try:
            with opener(path, "rt") as f:
                return "CONFIG_FUSE_PASSTHROUGH=y" in f.read()
        except OSError:
            continue
    return True


def passthrough_expected(build):
    return build_has_passthrough(build) and kernel_has_passthrough()


class Foreground:
    """The daemon with -d (foreground), its request log in a file."""

    def __init__(self, build, layer, mnt, opts, log, prefix=()):
        self.mnt, self.log = mnt, log
        mnt.mkdir(exist_ok=True)
        argv = [*prefix, str(build.exe), str(mnt), "-o", f"lowerdir={layer}" +
                ("," + opts if opts else ""), "-d"]
        self.logf = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf)
        deadline = time.monotonic() + H.DEADLINE
        while not H.is_mounted(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"foreground daemon did not mount: {open(log).read()[-3000:]}")
            time.sleep(0.02)

    def requests(self, opcode):
        with open(self.log, errors="replace") as f:
            return len(re.findall(rf"opcode: {opcode} \(", f.read()))

    def stop(self):
        H.unmount(self.mnt)
        try:
            self.proc.wait(timeout=H.DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()
        return self.proc.returncode


@pytest.fixture
def data(lowers):
    [l] = lowers(1)
    big = os.urandom(4 * MiB)
    write(l / "big", big)
    write(l / "ro444", b"read only\n")
    os.chmod(l / "ro444", 0o444)
    write(l / "dir/small", b"small\n")
    return l, big


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def test_read_only_mount_reads_without_read_requests(memoverlay_build, data, tmp_path):
    l, big = data
    before = H.tree_records(l)
    fg = Foreground(memoverlay_build, l, tmp_path / "m", "ro", tmp_path / "log")
    try:
        assert read_all(fg.mnt / "big") == big
        assert read_all(fg.mnt / "dir/small") == b"small\n"
        # two opens at once share the inode's one backing file
        with open(fg.mnt / "big", "rb") as a, open(fg.mnt / "big", "rb") as b:
            assert a.read(4096) == big[:4096]
            b.seek(3 * MiB)
            assert b.read(4096) == big[3 * MiB:3 * MiB + 4096]
        opens, reads = fg.requests("OPEN"), fg.requests("READ")
    finally:
        rc = fg.stop()
    assert rc == 0
    assert opens >= 4
    if passthrough_expected(memoverlay_build):
        assert reads == 0, f"{reads} READ requests reached the daemon: passthrough not in use"
    else:
        assert reads > 0
    assert H.tree_records(l) == before


@pytest.mark.parametrize("opts", [
    "ro,passthrough=off",
    # A writer may open any file a reader holds open: the kernel allows no
    # open beside a backed one, so a writable mount reads through the daemon.
    "",
], ids=["passthrough_off", "writable_mount"])
def test_reads_through_the_daemon(memoverlay_build, data, tmp_path, opts):
    l, big = data
    fg = Foreground(memoverlay_build, l, tmp_path / "m", opts, tmp_path / "log")
    try:
        assert read_all(fg.mnt / "big") == big
        reads = fg.requests("READ")
    finally:
        assert fg.stop() == 0
    assert reads > 0


@pytest.mark.parametrize("flags", [
    os.O_RDWR, os.O_WRONLY, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
    os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_TRUNC,
], ids=["rdwr", "wronly", "rdonly-trunc", "append", "rdwr-creat", "wronly-trunc"])
def test_read_only_mount_refuses_every_writable_open(mount, data, flags):
    l, big = data
    m = mount([l], "ro")
    for name in ("big", "ro444"):
        # a reader holds the file open (backed) while the writer tries
        with open(m / name, "rb") as reader:
            assert H.errno_of(os.open, m / name, flags, 0o644) == errno.EROFS
            assert reader.read(9) == (big[:9] if name == "big" else b"read only")
    assert read_all(m / "big") == big
    assert read_all(m / "ro444") == b"read only\n"


def test_read_only_mount_mmap(mount, data):
    l, big = data
    m = mount([l], "ro")
    fd = os.open(m / "big", os.O_RDONLY)
    try:
        with mmap.mmap(fd, 2 * MiB, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            assert mm[MiB:MiB + 100] == big[MiB:MiB + 100]
        # a shared writable mapping of a read-only fd: refused, as anywhere
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # a private one copies on write: the file stays as it is
        with mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            mm[0:5] = b"XXXXX"
            assert mm[0:5] == b"XXXXX"
    finally:
        os.close(fd)
    assert read_all(m / "big") == big


def test_read_only_mount_many_files_open(mount, lowers):
    """Each file its own backing file; all released again (the daemon keeps
    a bounded number of fds: one per open file, as without passthrough)."""
    [l] = lowers(1)
    for i in range(300):
        write(l / f"f{i}", f"file {i}\n".encode())
    m = mount([l], "ro")
    for _ in range(2):
        files = [open(m / f"f{i}", "rb") for i in range(300)]
        try:
            for i, f in enumerate(files):
                assert f.read() == f"file {i}\n".encode()
        finally:
            for f in files:
                f.close()


def test_read_only_mount_seek_data_and_exec(mount, lowers):
    [l] = lowers(1)
    with open(l / "sparse", "wb") as f:
        f.seek(MiB)
        f.write(b"end")
    write(l / "script", b"#!/bin/sh\necho ran\n")
    os.chmod(l / "script", 0o755)
    m = mount([l], "ro")
    fd = os.open(m / "sparse", os.O_RDONLY)
    try:
        assert os.pread(fd, 3, MiB) == b"end"
        assert os.lseek(fd, 0, os.SEEK_DATA) <= MiB
    finally:
        os.close(fd)
    assert subprocess.run([str(m / "script")], capture_output=True, text=True,
                          timeout=30).stdout == "ran\n"


def test_writable_mount_read_only_fd_then_writer(mount, data):
    """The ro/rw coherency of kernel overlayfs since 4.19: a read-only fd
    opened before another fd copies the file up and writes it sees the
    write; with a backed read-only fd the writer's open would fail (EIO)."""
    l, big = data
    m = mount([l])
    ro = os.open(m / "big", os.O_RDONLY)
    try:
        assert os.pread(ro, 8, 0) == big[:8]
        rw = os.open(m / "big", os.O_RDWR)
        try:
            os.pwrite(rw, b"WRITTEN!", 0)
            assert os.pread(ro, 8, 0) == b"WRITTEN!"
            ro2 = os.open(m / "big", os.O_RDONLY)
            assert os.pread(ro2, 8, 0) == b"WRITTEN!"
            os.close(ro2)
            # mmap MAP_SHARED write through the writer's fd
            with mmap.mmap(rw, 4096, mmap.MAP_SHARED) as mm:
                mm[8:12] = b"MMAP"
                mm.flush()
        finally:
            os.close(rw)
        assert os.pread(ro, 12, 0) == b"WRITTEN!MMAP"
    finally:
        os.close(ro)
    assert read_all(m / "big")[:12] == b"WRITTEN!MMAP"
    assert read_all(m / "big")[12:] == big[12:]


@pytest.mark.parametrize("flags", [
    os.O_RDWR, os.O_WRONLY, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
], ids=["rdwr", "wronly", "trunc", "append"])
def test_writable_mount_write_opens_leave_the_lower_alone(mount, data, flags):
    """Root opens a mode 0444 lower file for writing (root may): the write
    lands in the upper layer, never in the lower file."""
    l, big = data
    m = mount([l])
    with open(m / "ro444", "rb") as reader:
        fd = os.open(m / "ro444", flags)
        os.write(fd, b"new")
        os.close(fd)
        reader.seek(0)
        seen = reader.read()
    expect = {os.O_RDWR: b"newd only\n", os.O_WRONLY: b"newd only\n",
              os.O_WRONLY | os.O_TRUNC: b"new",
              os.O_WRONLY | os.O_APPEND: b"read only\nnew"}[flags]
    assert seen == expect
    assert read_all(m / "ro444") == expect
    assert read_all(l / "ro444") == b"read only\n"


def test_plain_user_falls_back(memoverlay_build, tmp_path):
    """A plain user may not register backing files: the mount works with
    the default (auto), reading through the daemon."""
    import shutil
    if not shutil.which("fusermount3"):
        pytest.skip("fusermount3 not installed")
    uid, gid, _ = H.ensure_test_user()
    with H.shared_tmpdir("mo-passthrough.", owner=(uid, gid)) as (d, left):
        l = d / "lower"
        write(l / "f", b"lower data\n" * 1000)
        for p in (l, l / "f"):
            os.chown(p, uid, gid)
        mnt = d / "mnt"
        mnt.mkdir()
        os.chmod(d, 0o755)
        os.chown(mnt, uid, gid)
        fg = Foreground(memoverlay_build, l, mnt, "ro", d / "log", prefix=H.as_user(uid, gid))
        try:
            r = subprocess.run(H.as_user(uid, gid) + ["cat", str(mnt / "f")], capture_output=True,
                               timeout=60)
            reads = fg.requests("READ")
            log = open(d / "log", errors="replace").read()
        finally:
            fg.stop()
        assert r.returncode == 0 and r.stdout == b"lower data\n" * 1000
        assert reads > 0
        assert "passthrough refused" not in log
    assert not left, f"left behind: {left}"


def test_root_of_a_user_namespace_falls_back(memoverlay_build):
    """`unshare -Urm`: root there has no CAP_SYS_ADMIN in the initial user
    namespace, which registering a backing file takes: a read-only mount
    works with the default (auto), reading through the daemon."""
    with H.shared_tmpdir("mo-passthrough-ns.") as (d, left):
        l = d / "lower"
        write(l / "f", b"lower data\n" * 1000)
        mnt = d / "mnt"
        mnt.mkdir()
        log = d / "log"
        script = (
            f"{memoverlay_build.exe} {mnt} -o lowerdir={l},ro -d > {log} 2>&1 &\n"
            + H.sh_wait_mounted(mnt) +
            f"cat {mnt}/f\n"
            f"umount {mnt}\n"
            "wait\n")
        r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        text = open(log, errors="replace").read()
        assert r.returncode == 0, r.stderr.decode(errors="replace") + text[-2000:]
        assert r.stdout == b"lower data\n" * 1000
        assert len(re.findall(r"opcode: READ \(", text)) > 0
        assert "passthrough refused" not in text
    assert not left, f"left behind: {left}"

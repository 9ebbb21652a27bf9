"""Write side (issue 6): every regular-file, directory and metadata operation
on the in-memory upper layer, on new files and on files that live in a
lower layer (copy-up). The fixture checks the lower tree is unchanged."""

import errno
import fcntl
import mmap
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import helpers as H
from helpers import write, mkdir, symlink, rd

# The write side needs the daemon: the 'kernel' reference build is read-only.
pytestmark = pytest.mark.memoverlay_only

PY = sys.executable
MiB = 1 << 20


@pytest.fixture
def lo(lowers):
    (l,) = lowers(1)
    write(l / "f", "lower-f\n")
    write(l / "ro_data", b"0123456789" * 1000)
    write(l / "dir/a", "a\n")
    write(l / "dir/b", "b\n")
    write(l / "dir/sub/c", "c\n")
    mkdir(l / "emptydir")
    symlink(l / "lnk", "f")
    return l


# -------------------------------------------------------------- create/open


def test_create_flags(mount, lo):
    m = mount([lo])
    fd = os.open(m / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    assert os.write(fd, b"hello") == 5
    os.close(fd)
    st = os.stat(m / "new")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 & ~umask
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert rd(m / "new") == b"hello"
    # O_EXCL on an upper and on a lower name
    assert H.errno_of(os.open, m / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert H.errno_of(os.open, m / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    # O_CREAT without O_EXCL on a lower name opens it (no truncation)
    fd = os.open(m / "f", os.O_CREAT | os.O_RDWR, 0o600)
    assert os.read(fd, 100) == b"lower-f\n"
    os.close(fd)
    assert stat.S_IMODE(os.stat(m / "f").st_mode) == 0o644
    # O_RDWR write in the middle of a lower file
    fd = os.open(m / "ro_data", os.O_RDWR)
    os.lseek(fd, 5, os.SEEK_SET)
    os.write(fd, b"XY")
    os.close(fd)
    assert rd(m / "ro_data") == b"01234XY789" + b"0123456789" * 999
    # O_CREAT in a lower-only subdirectory
    write(m / "dir/sub/new2", "n2")
    assert sorted(os.listdir(m / "dir/sub")) == ["c", "new2"]
    # ENOENT: O_CREAT below a missing directory
    assert H.errno_of(os.open, m / "nodir/x", os.O_CREAT | os.O_WRONLY) == errno.ENOENT


def test_append(mount, lo):
    m = mount([lo])
    with open(m / "f", "ab") as f:
        f.write(b"more\n")
    fd = os.open(m / "f", os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"end\n")          # O_APPEND ignores the file offset
    os.close(fd)
    assert rd(m / "f") == b"lower-f\nmore\nend\n"
    # two appenders interleave without overwriting
    a = os.open(m / "log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    b = os.open(m / "log", os.O_WRONLY | os.O_APPEND)
    for i in range(50):
        os.write(a, b"A" * 100)
        os.write(b, b"B" * 100)
    os.close(a)
    os.close(b)
    data = rd(m / "log")
    assert len(data) == 10000 and data.count(b"A") == 5000


def test_o_trunc(mount, lo):
    m = mount([lo])
    fd = os.open(m / "ro_data", os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"short")
    os.close(fd)
    assert rd(m / "ro_data") == b"short"
    assert os.stat(m / "ro_data").st_size == 5


def test_seek_data_never_skips_cached_writes(mount, lo):
    """With the kernel's write cache (the default) the daemon has not seen
    dirty pages yet: SEEK_DATA may report holes as data, never data as hole."""
    m = mount([lo])
    fd = os.open(m / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"D" * 4096, 1 * MiB)
        d = os.lseek(fd, 0, os.SEEK_DATA)
        assert d <= 1 * MiB, f"SEEK_DATA from 0 skipped written data: {d}"
        assert os.lseek(fd, 1 * MiB, os.SEEK_HOLE) >= 1 * MiB + 4096
    finally:
        os.close(fd)


def test_sparse_pwrite_and_seek_data_hole(mount, lo):
    # exact holes need every write to reach the daemon at once
    m = mount([lo], "nowriteback")
    fd = os.open(m / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"D" * 4096, 1 * MiB)
        os.pwrite(fd, b"E" * 4096, 3 * MiB)
        assert os.fstat(fd).st_size == 3 * MiB + 4096
        assert os.pread(fd, 4096, 0) == b"\0" * 4096
        assert os.pread(fd, 8192, 2 * MiB) == b"\0" * 8192
        assert os.pread(fd, 4096, 1 * MiB) == b"D" * 4096
        # holes take no memory
        assert os.fstat(fd).st_blocks * 512 < 1 * MiB
        d = os.lseek(fd, 0, os.SEEK_DATA)
        assert d == 1 * MiB, f"SEEK_DATA from 0 returned {d}"
        h = os.lseek(fd, 1 * MiB, os.SEEK_HOLE)
        assert 1 * MiB + 4096 <= h < 3 * MiB, f"SEEK_HOLE from 1MiB returned {h}"
        assert os.lseek(fd, h, os.SEEK_DATA) == 3 * MiB
        assert os.lseek(fd, 3 * MiB, os.SEEK_HOLE) == 3 * MiB + 4096
        assert H.errno_of(os.lseek, fd, 3 * MiB + 4096, os.SEEK_DATA) == errno.ENXIO
    finally:
        os.close(fd)
    # pwrite past EOF of a lower file
    fd = os.open(m / "f", os.O_WRONLY)
    os.pwrite(fd, b"Z", 100)
    os.close(fd)
    assert rd(m / "f") == b"lower-f\n" + b"\0" * 92 + b"Z"


def test_truncate_grow_shrink(mount, lo):
    m = mount([lo])
    os.truncate(m / "ro_data", 15)
    assert rd(m / "ro_data") == b"012345678901234"
    os.truncate(m / "ro_data", 20000)
    assert rd(m / "ro_data") == b"012345678901234" + b"\0" * 19985
    fd = os.open(m / "ro_data", os.O_RDWR)
    os.ftruncate(fd, 3)
    os.ftruncate(fd, 5)
    os.close(fd)
    assert rd(m / "ro_data") == b"012\0\0"
    # shrink then grow must not resurrect old bytes of an upper file
    write(m / "u", b"x" * 10000)
    os.truncate(m / "u", 10)
    os.truncate(m / "u", 10000)
    assert rd(m / "u") == b"x" * 10 + b"\0" * 9990
    # truncate of a lower file without opening it for write: size only
    os.truncate(m / "dir/a", 0)
    assert rd(m / "dir/a") == b""


def test_fallocate_modes(mount, lo):
    m = mount([lo])
    fd = os.open(m / "fa", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        H.fallocate(fd, 0, 0, 64 * 1024)
        assert os.fstat(fd).st_size == 64 * 1024
        assert os.pread(fd, 64 * 1024, 0) == b"\0" * 64 * 1024
        H.fallocate(fd, H.FALLOC_FL_KEEP_SIZE, 64 * 1024, 64 * 1024)
        assert os.fstat(fd).st_size == 64 * 1024
        os.pwrite(fd, b"\xff" * 64 * 1024, 0)
        H.fallocate(fd, H.FALLOC_FL_PUNCH_HOLE | H.FALLOC_FL_KEEP_SIZE, 4096, 8192)
        assert os.fstat(fd).st_size == 64 * 1024
        assert os.pread(fd, 16384, 0) == b"\xff" * 4096 + b"\0" * 8192 + b"\xff" * 4096
        H.fallocate(fd, H.FALLOC_FL_ZERO_RANGE, 32768, 4096)
        assert os.pread(fd, 4096, 32768) == b"\0" * 4096
        assert os.pread(fd, 1, 32768 + 4096) == b"\xff"
        # ZERO_RANGE past EOF grows the file
        H.fallocate(fd, H.FALLOC_FL_ZERO_RANGE, 64 * 1024, 4096)
        assert os.fstat(fd).st_size == 68 * 1024
        # unaligned punch
        H.fallocate(fd, H.FALLOC_FL_PUNCH_HOLE | H.FALLOC_FL_KEEP_SIZE, 10, 20)
        assert os.pread(fd, 40, 0) == b"\xff" * 10 + b"\0" * 20 + b"\xff" * 10
    finally:
        os.close(fd)
    # the fallocate(1) tool on a lower file (copy-up)
    run = lambda *a: subprocess.run(["fallocate", *a], capture_output=True, text=True,
                                    timeout=30)
    r = run("-p", "-o", "2", "-l", "3", str(m / "ro_data"))
    assert r.returncode == 0, r.stderr
    assert rd(m / "ro_data")[:10] == b"01\0\0\x00" + b"56789"
    r = run("-z", "-o", "10", "-l", "10", str(m / "ro_data"))
    assert r.returncode == 0, r.stderr
    assert rd(m / "ro_data")[10:20] == b"\0" * 10
    r = run("-n", "-l", "1M", str(m / "f"))
    assert r.returncode == 0, r.stderr
    assert os.stat(m / "f").st_size == 8 and rd(m / "f") == b"lower-f\n"
    r = run("-l", "1M", str(m / "g"))
    assert r.returncode == 0, r.stderr
    assert os.stat(m / "g").st_size == MiB


def test_mmap_shared_write(mount, lo):
    m = mount([lo])
    write(m / "mm", b"\0" * 8192)
    fd = os.open(m / "mm", os.O_RDWR)
    mp = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
    mp[100:105] = b"hello"
    mp[5000:5003] = b"abc"
    mp.flush()
    assert os.pread(fd, 5, 100) == b"hello"
    mp.close()
    os.close(fd)
    data = rd(m / "mm")
    assert data[100:105] == b"hello" and data[5000:5003] == b"abc"
    # mmap of a lower file opened for write copies it up
    fd = os.open(m / "ro_data", os.O_RDWR)
    mp = mmap.mmap(fd, 0, mmap.MAP_SHARED)
    mp[0:3] = b"MMM"
    mp.flush()
    mp.close()
    os.close(fd)
    assert rd(m / "ro_data")[:5] == b"MMM34"
    # a read-only private mapping of a lower file
    with open(m / "f", "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mp:
            assert mp[:] == b"lower-f\n"


def test_copy_file_range(mount, lo):
    m = mount([lo])
    write(m / "src", bytes(range(256)) * 64)
    s = os.open(m / "src", os.O_RDONLY)
    d = os.open(m / "dst", os.O_CREAT | os.O_WRONLY, 0o644)
    n = 0
    while n < 16384:
        c = os.copy_file_range(s, d, 16384 - n, n, n)
        assert c > 0
        n += c
    os.close(s)
    os.close(d)
    assert rd(m / "dst") == rd(m / "src")
    # lower -> upper, with offsets
    s = os.open(m / "ro_data", os.O_RDONLY)
    d = os.open(m / "dst2", os.O_CREAT | os.O_WRONLY, 0o644)
    assert os.copy_file_range(s, d, 10, 3, 100) == 10
    os.close(s)
    os.close(d)
    assert rd(m / "dst2") == b"\0" * 100 + b"3456789012"
    # upper -> lower file (copy-up of the destination)
    s = os.open(m / "src", os.O_RDONLY)
    d = os.open(m / "f", os.O_WRONLY)
    assert os.copy_file_range(s, d, 4, 0, 2) == 4
    os.close(s)
    os.close(d)
    assert rd(m / "f") == b"lo" + bytes([0, 1, 2, 3]) + b"f\n"


def test_fsync(mount, lo):
    m = mount([lo])
    fd = os.open(m / "s", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"data")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(m / "dir", os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    r = subprocess.run(["sync", str(m / "s")], timeout=30)
    assert r.returncode == 0
    assert rd(m / "s") == b"data"


LOCKER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
kind = sys.argv[2]
try:
    if kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
except OSError as e:
    print(e.errno); sys.exit(3)
print(0)
"""


def test_flock_and_posix_locks(mount, lo):
    m = mount([lo])
    fd1 = os.open(m / "f", os.O_RDWR)
    fd2 = os.open(m / "f", os.O_RDWR)
    fcntl.flock(fd1, fcntl.LOCK_EX)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    r = subprocess.run([PY, "-c", LOCKER, str(m / "f"), "flock"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 3, (r.stdout, r.stderr)
    fcntl.flock(fd1, fcntl.LOCK_UN)
    fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd2, fcntl.LOCK_UN)
    # POSIX byte-range locks conflict between processes
    fcntl.lockf(fd1, fcntl.LOCK_EX, 10, 0)
    r = subprocess.run([PY, "-c", LOCKER, str(m / "f"), "posix"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 3 and int(r.stdout) in (errno.EAGAIN, errno.EACCES), r
    fcntl.lockf(fd1, fcntl.LOCK_UN, 10, 0)
    r = subprocess.run([PY, "-c", LOCKER, str(m / "f"), "posix"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    os.close(fd1)
    os.close(fd2)


def test_mknod_special_files(mount, lo):
    m = mount([lo])
    os.mkfifo(m / "fifo", 0o640)
    os.mknod(m / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    os.mknod(m / "blk", stat.S_IFBLK | 0o660, os.makedev(8, 1))
    os.mknod(m / "reg", stat.S_IFREG | 0o604)
    H.bind_socket(m / "sock")
    st = os.lstat(m / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    st = os.lstat(m / "chr")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 7)
    st = os.lstat(m / "blk")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (8, 1)
    assert stat.S_ISREG(os.lstat(m / "reg").st_mode) and os.lstat(m / "reg").st_size == 0
    assert stat.S_ISSOCK(os.lstat(m / "sock").st_mode)
    assert H.errno_of(os.mknod, m / "fifo", stat.S_IFIFO | 0o600) == errno.EEXIST
    # the fifo carries data (the kernel serves it; the daemon only stores the node)
    r = os.open(m / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(m / "fifo", os.O_WRONLY)
    os.write(w, b"through")
    assert os.read(r, 100) == b"through"
    os.close(w)
    os.close(r)
    # a socket node accepts connections
    s = socket.socket(socket.AF_UNIX)
    path = m / "sock2"
    old = os.getcwd()
    os.chdir(m)
    try:
        s.bind("sock2")
        s.listen(1)
        c = socket.socket(socket.AF_UNIX)
        c.connect("sock2")
        c.close()
    finally:
        os.chdir(old)
        s.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert {"fifo", "chr", "blk", "reg", "sock", "sock2"} <= set(os.listdir(m))


# -------------------------------------------------------------- directories


def test_mkdir_rmdir(mount, lo):
    m = mount([lo])
    os.mkdir(m / "nd", 0o750)
    st = os.stat(m / "nd")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_nlink >= 2
    write(m / "nd/x", "x")
    assert H.errno_of(os.rmdir, m / "nd") == errno.ENOTEMPTY
    os.unlink(m / "nd/x")
    os.rmdir(m / "nd")
    assert not os.path.exists(m / "nd")
    # non-empty only in the lower layer
    assert H.errno_of(os.rmdir, m / "dir") == errno.ENOTEMPTY
    assert H.errno_of(os.rmdir, m / "dir/sub") == errno.ENOTEMPTY
    # lower dir whose entries were all deleted
    os.unlink(m / "dir/sub/c")
    assert os.listdir(m / "dir/sub") == []
    os.rmdir(m / "dir/sub")
    assert sorted(os.listdir(m / "dir")) == ["a", "b"]
    # lower empty dir
    os.rmdir(m / "emptydir")
    assert "emptydir" not in os.listdir(m)
    assert H.errno_of(os.stat, m / "emptydir") == errno.ENOENT
    # EEXIST / ENOENT / ENOTDIR
    assert H.errno_of(os.mkdir, m / "dir") == errno.EEXIST
    assert H.errno_of(os.mkdir, m / "f") == errno.EEXIST
    assert H.errno_of(os.rmdir, m / "nothere") == errno.ENOENT
    assert H.errno_of(os.rmdir, m / "f") == errno.ENOTDIR
    assert H.errno_of(os.mkdir, m / "f/x") == errno.ENOTDIR
    # deep mkdir -p inside a lower dir
    os.makedirs(m / "dir/p/q/r")
    assert os.path.isdir(m / "dir/p/q/r")


def test_removed_and_recreated_dir_is_opaque(mount, lo):
    m = mount([lo])
    shutil.rmtree(m / "dir")
    assert "dir" not in os.listdir(m)
    os.mkdir(m / "dir")
    assert os.listdir(m / "dir") == []
    for n in ("a", "b", "sub"):
        assert H.errno_of(os.lstat, m / "dir" / n) == errno.ENOENT
    write(m / "dir/a", "new a")
    assert os.listdir(m / "dir") == ["a"]
    assert rd(m / "dir/a") == b"new a"
    # also a file replaced by a directory, and a directory by a file
    os.unlink(m / "f")
    os.mkdir(m / "f")
    assert os.listdir(m / "f") == []
    os.rmdir(m / "emptydir")
    write(m / "emptydir", "now a file")
    assert rd(m / "emptydir") == b"now a file"


def test_rmdir_cwd_and_busy(mount, lo):
    m = mount([lo])
    os.mkdir(m / "d")
    fd = os.open(m / "d", os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(m / "d")
    assert os.listdir(fd) == []
    assert H.errno_of(os.open, "x", os.O_CREAT | os.O_WRONLY, dir_fd=fd) == errno.ENOENT
    os.close(fd)


# -------------------------------------------------------------- names


def test_symlink(mount, lo):
    m = mount([lo])
    os.symlink("dir/a", m / "s1")
    os.symlink("/nonexistent/target", m / "dangling")
    os.symlink("x" * 4000, m / "long")
    assert os.readlink(m / "s1") == "dir/a"
    assert rd(m / "s1") == b"a\n"
    assert os.readlink(m / "long") == "x" * 4000
    assert stat.S_ISLNK(os.lstat(m / "dangling").st_mode)
    assert os.lstat(m / "s1").st_size == len("dir/a")
    assert H.errno_of(os.symlink, "t", m / "f") == errno.EEXIST
    assert H.errno_of(os.symlink, "t", m / "lnk") == errno.EEXIST
    # writing through a lower symlink copies up the target, not the link
    with open(m / "lnk", "ab") as f:
        f.write(b"via link\n")
    assert rd(m / "f") == b"lower-f\nvia link\n"
    assert os.readlink(m / "lnk") == "f"
    os.unlink(m / "lnk")
    os.symlink("dir/b", m / "lnk")
    assert rd(m / "lnk") == b"b\n"


def test_hard_links(mount, lo):
    m = mount([lo])
    write(m / "n", "new")
    os.link(m / "n", m / "n2")
    assert os.stat(m / "n").st_nlink == 2
    assert os.stat(m / "n").st_ino == os.stat(m / "n2").st_ino
    with open(m / "n2", "ab") as f:
        f.write(b"+")
    assert rd(m / "n") == b"new+"
    os.unlink(m / "n")
    assert os.stat(m / "n2").st_nlink == 1
    # link to a lower file
    ino = os.stat(m / "f").st_ino
    os.link(m / "f", m / "dir/f-link")
    st1, st2 = os.stat(m / "f"), os.stat(m / "dir/f-link")
    assert st1.st_ino == st2.st_ino == ino
    assert st1.st_nlink == st2.st_nlink == 2
    with open(m / "dir/f-link", "ab") as f:
        f.write(b"appended\n")
    assert rd(m / "f") == b"lower-f\nappended\n"
    os.unlink(m / "f")
    assert os.stat(m / "dir/f-link").st_nlink == 1
    assert rd(m / "dir/f-link") == b"lower-f\nappended\n"
    # errors
    assert H.errno_of(os.link, m / "dir/a", m / "dir/b") == errno.EEXIST
    assert H.errno_of(os.link, m / "missing", m / "x") == errno.ENOENT
    assert H.errno_of(os.link, m / "dir", m / "dirlink") == errno.EPERM
    # link of a symlink (not followed)
    os.link(m / "lnk", m / "lnk2", follow_symlinks=False)
    assert os.readlink(m / "lnk2") == "f"


def test_unlink_lower_whiteout(mount, lo):
    m = mount([lo])
    os.unlink(m / "dir/a")
    assert H.errno_of(os.stat, m / "dir/a") == errno.ENOENT
    assert sorted(os.listdir(m / "dir")) == ["b", "sub"]
    assert "a" not in H.raw_listdir(m / "dir")
    assert H.errno_of(os.unlink, m / "dir/a") == errno.ENOENT
    assert H.errno_of(os.open, m / "dir/a", os.O_RDONLY) == errno.ENOENT
    # re-create: a new file, not the lower one
    write(m / "dir/a", "again")
    assert rd(m / "dir/a") == b"again"
    assert sorted(os.listdir(m / "dir")) == ["a", "b", "sub"]
    os.unlink(m / "dir/a")
    assert sorted(os.listdir(m / "dir")) == ["b", "sub"]
    # whiteout of a symlink and of a lower dir name re-created as a symlink
    os.unlink(m / "lnk")
    assert not os.path.lexists(m / "lnk")
    os.symlink("dir", m / "lnk")
    assert os.path.isdir(m / "lnk")
    # unlink of a directory: EISDIR
    assert H.errno_of(os.unlink, m / "dir") == errno.EISDIR
    # listing of a big lower dir after deleting every other name
    assert (lo / "dir/a").read_text() == "a\n"


@pytest.mark.parametrize("opts", ["", "nowriteback"])
def test_open_then_unlink(opts, mount, lo):
    m = mount([lo], opts)
    write(m / "tmp", "abc")
    fd = os.open(m / "tmp", os.O_RDWR)
    os.unlink(m / "tmp")
    assert not os.path.exists(m / "tmp")
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, 10, 0) == b"abc"
    os.pwrite(fd, b"defg", 3)
    assert os.pread(fd, 10, 0) == b"abcdefg"
    os.ftruncate(fd, 2)
    assert os.pread(fd, 10, 0) == b"ab"
    os.fchmod(fd, 0o600)
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    os.close(fd)
    # a lower file opened for write, then unlinked
    fd = os.open(m / "ro_data", os.O_RDWR)
    os.unlink(m / "ro_data")
    assert os.pread(fd, 10, 0) == b"0123456789"
    os.pwrite(fd, b"!", 0)
    assert os.pread(fd, 3, 0) == b"!12"
    os.close(fd)
    assert not os.path.exists(m / "ro_data")
    # a lower file opened read-only, then unlinked: still readable
    fd = os.open(m / "dir/b", os.O_RDONLY)
    os.unlink(m / "dir/b")
    assert os.read(fd, 10) == b"b\n"
    assert os.fstat(fd).st_nlink == 0
    os.fchmod(fd, 0o640)  # a metadata copy-up of the nameless file
    assert os.fstat(fd).st_nlink == 0 and not os.path.exists(m / "dir/b")
    os.close(fd)
    # the name is free for a new file while an unlinked one is open
    write(m / "tmp", "1")
    fd = os.open(m / "tmp", os.O_RDWR)
    os.unlink(m / "tmp")
    write(m / "tmp", "2")
    assert os.pread(fd, 5, 0) == b"1"
    assert rd(m / "tmp") == b"2"
    os.close(fd)


# -------------------------------------------------------------- metadata


def test_chmod_special_bits(mount, lo):
    m = mount([lo])
    write(m / "n", "x")
    for p in ("n", "f", "dir/a"):
        for mode in (0o4755, 0o2755, 0o6711, 0o1777, 0o0, 0o777, 0o644):
            os.chmod(m / p, mode)
            assert stat.S_IMODE(os.stat(m / p).st_mode) == mode, (p, oct(mode))
    for p in ("dir", "emptydir"):
        for mode in (0o1777, 0o2775, 0o700, 0o755):
            os.chmod(m / p, mode)
            assert stat.S_IMODE(os.stat(m / p).st_mode) == mode, (p, oct(mode))
    # chmod of a lower file leaves its content alone
    assert rd(m / "f") == b"lower-f\n"
    # chmod through a symlink changes the target
    os.chmod(m / "lnk", 0o600)
    assert stat.S_IMODE(os.stat(m / "f").st_mode) == 0o600


def test_chown_unmapped_ids(mount, lo):
    m = mount([lo])
    write(m / "n", "x")
    os.symlink("n", m / "sl")
    for p in ("n", "f", "dir", "dir/sub/c"):
        os.chown(m / p, 4000000, 4000001)
        st = os.stat(m / p)
        assert (st.st_uid, st.st_gid) == (4000000, 4000001), p
    os.chown(m / "sl", 4000002, 4000003, follow_symlinks=False)
    st = os.lstat(m / "sl")
    assert (st.st_uid, st.st_gid) == (4000002, 4000003)
    assert os.stat(m / "n").st_uid == 4000000
    # uid only / gid only (-1 keeps the other)
    os.chown(m / "f", 5, -1)
    assert (os.stat(m / "f").st_uid, os.stat(m / "f").st_gid) == (5, 4000001)
    os.chown(m / "f", -1, 6)
    assert (os.stat(m / "f").st_uid, os.stat(m / "f").st_gid) == (5, 6)
    # chown clears setuid/setgid of a regular file (as the kernel does)
    os.chmod(m / "n", 0o6755)
    os.chown(m / "n", 7, 7)
    assert stat.S_IMODE(os.stat(m / "n").st_mode) & 0o6000 == 0
    # chown(1) and ls -n
    r = subprocess.run(["chown", "-R", "4000000:4000001", str(m / "dir")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert os.stat(m / "dir/sub").st_uid == 4000000
    assert os.stat(m / "dir/a").st_gid == 4000001


def test_utimensat_ns(mount, lo):
    m = mount([lo])
    write(m / "n", "x")
    for p in ("n", "f", "dir"):
        os.utime(m / p, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
        st = os.stat(m / p)
        assert st.st_atime_ns == 1_500_000_000_123_456_789, p
        assert st.st_mtime_ns == 1_600_000_000_987_654_321, p
    # UTIME_OMIT keeps, UTIME_NOW sets now: a time between the clock read
    # before the call and after it (+-2 s for clock granularity; a slow
    # machine only widens the window)
    before = time.time_ns()
    H.utimensat(m / "n", H.UTIME_OMIT, H.UTIME_NOW)
    st = os.stat(m / "n")
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert before - 2_000_000_000 <= st.st_mtime_ns <= time.time_ns() + 2_000_000_000
    H.utimensat(m / "f", (1, 2), H.UTIME_OMIT)
    st = os.stat(m / "f")
    assert st.st_atime_ns == 1_000_000_002
    assert st.st_mtime_ns == 1_600_000_000_987_654_321
    before = time.time_ns()
    H.utimensat(m / "f", H.UTIME_NOW, H.UTIME_NOW)
    st = os.stat(m / "f")
    assert before - 2_000_000_000 <= st.st_atime_ns <= time.time_ns() + 2_000_000_000
    assert before - 2_000_000_000 <= st.st_mtime_ns <= time.time_ns() + 2_000_000_000
    # lutimes on a symlink
    H.utimensat(m / "lnk", (10, 11), (20, 21), follow=False)
    st = os.lstat(m / "lnk")
    assert (st.st_atime_ns, st.st_mtime_ns) == (10_000_000_011, 20_000_000_021)
    # touch -d with fractional seconds
    r = subprocess.run(["touch", "-d", "2001-02-03 04:05:06.123456789Z", str(m / "dir/a")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert os.stat(m / "dir/a").st_mtime_ns == 981173106_123456789
    # write updates mtime and ctime
    os.utime(m / "n", ns=(0, 0))
    c0 = os.stat(m / "n").st_ctime_ns
    with open(m / "n", "ab") as f:
        f.write(b"y")
    st = os.stat(m / "n")
    assert st.st_mtime_ns > 0 and st.st_ctime_ns >= c0


@pytest.mark.parametrize("ns", ["user", "trusted", "security"])
def test_xattrs(mount, lo, ns):
    m = mount([lo])
    write(m / "n", "x")
    for p in ("n", "f", "dir", "dir/sub"):
        name = f"{ns}.test"
        os.setxattr(m / p, name, b"value\0bin")
        assert os.getxattr(m / p, name) == b"value\0bin"
        assert name in os.listxattr(m / p)
        os.setxattr(m / p, name, b"v2", os.XATTR_REPLACE)
        assert os.getxattr(m / p, name) == b"v2"
        assert H.errno_of(os.setxattr, m / p, name, b"v3", os.XATTR_CREATE) == errno.EEXIST
        assert H.errno_of(os.setxattr, m / p, f"{ns}.other", b"v", os.XATTR_REPLACE) == \
            errno.ENODATA
        os.setxattr(m / p, f"{ns}.empty", b"")
        assert os.getxattr(m / p, f"{ns}.empty") == b""
        big = os.urandom(60000)
        os.setxattr(m / p, f"{ns}.big", big)
        assert os.getxattr(m / p, f"{ns}.big") == big
        os.removexattr(m / p, name)
        assert H.errno_of(os.getxattr, m / p, name) == errno.ENODATA
        assert H.errno_of(os.removexattr, m / p, name) == errno.ENODATA
        assert name not in os.listxattr(m / p)
        assert {f"{ns}.empty", f"{ns}.big"} <= set(os.listxattr(m / p))
    assert rd(m / "f") == b"lower-f\n"


def test_xattr_on_lower_with_existing_xattrs(mount, lowers):
    (l,) = lowers(1)
    write(l / "x", "data")
    os.setxattr(l / "x", "user.keep", b"lower")
    os.setxattr(l / "x", "trusted.keep", b"lower-t")
    m = mount([l])
    os.setxattr(m / "x", "user.new", b"n")
    assert os.getxattr(m / "x", "user.keep") == b"lower"
    assert os.getxattr(m / "x", "trusted.keep") == b"lower-t"
    assert {"user.keep", "user.new", "trusted.keep"} <= set(os.listxattr(m / "x"))
    os.removexattr(m / "x", "user.keep")
    assert "user.keep" not in os.listxattr(m / "x")
    assert os.getxattr(l / "x", "user.keep") == b"lower"
    # symlink xattrs (trusted. works on symlinks; user. does not)
    os.symlink("x", m / "s")
    os.setxattr(m / "s", "trusted.s", b"1", follow_symlinks=False)
    assert os.getxattr(m / "s", "trusted.s", follow_symlinks=False) == b"1"
    assert H.errno_of(os.setxattr, m / "s", "user.s", b"1", follow_symlinks=False) in \
        (errno.EPERM, errno.ENOTSUP)


def test_xattr_unknown_namespace(mount, lo):
    """tmpfs and kernel overlayfs refuse names outside the known namespaces
    (EOPNOTSUPP); so must the upper layer (FUSE passes any name through)."""
    m = mount([lo])
    write(m / "n", "x")
    for p in ("n", "f"):
        assert H.errno_of(os.setxattr, m / p, "bogus.ns", b"x") in (errno.EOPNOTSUPP,), p
        assert H.errno_of(os.setxattr, m / p, "noprefix", b"x") in (errno.EOPNOTSUPP,), p
        assert "bogus.ns" not in os.listxattr(m / p)


def _mkdtemp_world():
    d = tempfile.mkdtemp(prefix="memoverlay-acl-", dir="/tmp")
    os.chmod(d, 0o755)
    return Path(d)


def _release(mount, base):
    """Unmount (with every fixture check) mounts below BASE, then remove BASE."""
    for mm in list(mount.mounts):
        if str(mm.path).startswith(str(base)):
            mount.unmount(mm)
    shutil.rmtree(base, ignore_errors=True)


def _as_user(cmd, uid=1000, gid=1000):
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           "--", *cmd], capture_output=True, text=True, timeout=30)


def test_posix_acls(mount, lowers):
    (l,) = lowers(1)
    write(l / "secret", "lower secret\n", mode=0o600)
    write(l / "pub", "pub\n", mode=0o644)
    mkdir(l / "d", 0o755)
    base = _mkdtemp_world()
    try:
        m = mount([l], mountpoint=base / "m")
        write(m / "mine", "new secret\n", mode=0o600)
        os.chmod(m, 0o755)
        # without an ACL: denied
        assert _as_user(["cat", str(m / "secret")]).returncode != 0
        assert _as_user(["cat", str(m / "mine")]).returncode != 0
        for name in ("secret", "mine"):
            r = subprocess.run(["setfacl", "-m", "u:1000:r", str(m / name)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            r = subprocess.run(["getfacl", "-cpn", str(m / name)], capture_output=True,
                               text=True, timeout=30)
            assert "user:1000:r--" in r.stdout, r.stdout
            assert "system.posix_acl_access" in os.listxattr(m / name)
            r = _as_user(["cat", str(m / name)])
            assert r.returncode == 0, f"ACL u:1000:r not honoured on {name}: {r.stderr}"
            # ls shows the + marker; the mode group bits are the mask
            assert stat.S_IMODE(os.stat(m / name).st_mode) == 0o640
            r = _as_user(["sh", "-c", f"echo x >> {m / name}"])
            assert r.returncode != 0, f"write allowed by a read-only ACL on {name}"
        # a deny ACL: pub is world-readable, but u:1000 gets nothing
        subprocess.run(["setfacl", "-m", "u:1000:---", str(m / "pub")], check=True, timeout=30)
        r = _as_user(["cat", str(m / "pub")])
        assert r.returncode != 0, "u:1000:--- ACL not enforced (other=r would allow)"
        # default ACL of a directory is inherited by new files
        subprocess.run(["setfacl", "-d", "-m", "u:1000:rwx", str(m / "d")], check=True,
                       timeout=30)
        subprocess.run(["setfacl", "-m", "u:1000:rwx", str(m / "d")], check=True, timeout=30)
        write(m / "d/inh", "inherited\n")
        r = subprocess.run(["getfacl", "-cpn", str(m / "d/inh")], capture_output=True,
                           text=True, timeout=30)
        assert "user:1000:rw" in r.stdout, r.stdout
        r = _as_user(["sh", "-c", f"echo more >> {m / 'd/inh'} && touch {m / 'd/byuser'}"])
        assert r.returncode == 0, r.stderr
        assert os.stat(m / "d/byuser").st_uid == 1000
        # removing the ACL takes the access away again
        subprocess.run(["setfacl", "-b", str(m / "secret")], check=True, timeout=30)
        assert _as_user(["cat", str(m / "secret")]).returncode != 0
    finally:
        _release(mount, base)


def test_permissions_default(mount, lowers):
    """default_permissions: mode bits and owners are enforced for a non-root user."""
    (l,) = lowers(1)
    write(l / "ro", "ro\n", mode=0o644)
    mkdir(l / "closed", 0o700)
    write(l / "closed/in", "in\n")
    base = _mkdtemp_world()
    try:
        m = mount([l], mountpoint=base / "m")
        assert _as_user(["sh", "-c", f"echo x >> {m / 'ro'}"]).returncode != 0
        assert _as_user(["ls", str(m / "closed")]).returncode != 0
        assert _as_user(["touch", str(m / "newfile")]).returncode != 0
        os.chown(m / "closed", 1000, 1000)
        assert _as_user(["cat", str(m / "closed/in")]).returncode == 0
        r = _as_user(["sh", "-c", f"echo y > {m / 'closed/mine'}; chmod 4700 {m / 'closed/mine'}"])
        assert r.returncode == 0, r.stderr
        st = os.stat(m / "closed/mine")
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        # non-owner cannot chmod / chown
        assert _as_user(["chmod", "777", str(m / "ro")]).returncode != 0
        assert _as_user(["chown", "1000", str(m / "ro")]).returncode != 0
        # sticky dir: user 1000 cannot remove root's file in a 1777 dir
        os.mkdir(m / "tmpd", 0o1777)
        write(m / "tmpd/rootfile", "r")
        assert _as_user(["rm", "-f", str(m / "tmpd/rootfile")]).returncode != 0
        assert os.path.exists(m / "tmpd/rootfile")
    finally:
        _release(mount, base)


# -------------------------------------------------------------- errors


def test_error_codes(mount, lo):
    m = mount([lo])
    long = "n" * 256
    ok255 = "n" * 255
    E = H.errno_of
    assert E(os.open, m / long, os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert E(os.mkdir, m / long) == errno.ENAMETOOLONG
    assert E(os.symlink, "x", m / long) == errno.ENAMETOOLONG
    assert E(os.link, m / "f", m / long) == errno.ENAMETOOLONG
    assert E(os.rename, m / "f", m / long) == errno.ENAMETOOLONG
    assert E(os.mknod, m / long, stat.S_IFIFO | 0o600) == errno.ENAMETOOLONG
    assert E(os.stat, m / long) == errno.ENAMETOOLONG
    write(m / ok255, "255 is fine")
    assert ok255 in os.listdir(m)
    assert rd(m / ok255) == b"255 is fine"
    assert E(os.open, m / "missing", os.O_RDONLY) == errno.ENOENT
    assert E(os.unlink, m / "missing") == errno.ENOENT
    assert E(os.rename, m / "missing", m / "x") == errno.ENOENT
    assert E(os.chmod, m / "missing", 0o600) == errno.ENOENT
    assert E(os.open, m / "f/x", os.O_RDONLY) == errno.ENOTDIR
    assert E(os.open, m / "f/x", os.O_CREAT | os.O_WRONLY) == errno.ENOTDIR
    assert E(os.open, m / "f", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR
    assert E(os.open, m / "dir", os.O_WRONLY) == errno.EISDIR
    assert E(os.open, m / "dir", os.O_RDWR) == errno.EISDIR
    assert E(os.open, m / "dir", os.O_CREAT | os.O_WRONLY) == errno.EISDIR
    assert E(os.unlink, m / "dir") == errno.EISDIR
    assert E(os.unlink, m / "emptydir") == errno.EISDIR
    assert E(os.rmdir, m / "dir") == errno.ENOTEMPTY
    assert E(os.mkdir, m / "dir") == errno.EEXIST
    assert E(os.mkdir, m / "lnk") == errno.EEXIST
    assert E(os.rmdir, m / "lnk") == errno.ENOTDIR
    assert E(os.truncate, m / "dir", 0) == errno.EISDIR
    assert E(os.getxattr, m / "f", "user.none") == errno.ENODATA
    assert E(os.open, m / "lnk", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    assert E(os.rename, m / "dir", m / "dir/sub/inside") == errno.EINVAL
    # the mount still works after all those errors
    write(m / "after", "ok")
    assert rd(m / "after") == b"ok"

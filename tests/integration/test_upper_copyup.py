"""Write side (issue 6): copy-up. Data copy-up on open-for-write/truncate,
metadata-only copy-up for chmod/chown/utimes/xattrs, st_ino kept, lower hard
links stay one inode, lower metadata preserved, lower never touched."""

import hashlib
import os
import stat
import subprocess
import sys

import pytest

import helpers as H
from helpers import write, mkdir, symlink, rd

# The write side needs the daemon: the 'kernel' reference build is read-only.
pytestmark = pytest.mark.memoverlay_only

MiB = 1 << 20
PY = sys.executable


def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


@pytest.fixture
def layered(lowers):
    top, mid, bot = lowers(3)
    write(bot / "a/b/c/deep", "deep-bot")
    write(bot / "bottom_file", "bf")
    mkdir(mid / "a/b")
    write(top / "topfile", "tf")
    symlink(bot / "sl", "bottom_file")
    return top, mid, bot


COPY_UPS = {
    "open_w": lambda p: os.close(os.open(p, os.O_WRONLY)),
    "write": lambda p: open(p, "ab").write(b"+"),
    "truncate": lambda p: os.truncate(p, 1),
    "chmod": lambda p: os.chmod(p, 0o600),
    "chown": lambda p: os.chown(p, 4000000, 4000001),
    "utime": lambda p: os.utime(p, ns=(5, 6)),
    "setxattr": lambda p: os.setxattr(p, "user.k", b"v"),
    "link": lambda p: os.link(p, str(p) + ".lnk"),
    "rename": lambda p: (os.rename(p, str(p) + ".mv"), os.rename(str(p) + ".mv", p)),
}


@pytest.mark.parametrize("how", sorted(COPY_UPS))
def test_copy_up_keeps_st_ino(mount, layered, how):
    m = mount(list(layered))
    dinos = {r: os.stat(m / r).st_ino for r in ("a", "a/b", "a/b/c")}
    for rel in ("a/b/c/deep", "bottom_file", "topfile"):
        p = m / rel
        before = os.stat(p)
        COPY_UPS[how](p)
        after = os.stat(p)
        assert after.st_ino == before.st_ino, f"{how} of {rel}: st_ino changed"
        assert after.st_dev == before.st_dev
    # the parent directories of a deep copy-up keep their st_ino too
    for rel in ("a", "a/b", "a/b/c"):
        assert os.stat(m / rel).st_ino == dinos[rel], rel
    # a readdir d_ino agrees with stat
    with H.Dir(m / "a/b/c") as d:
        ents = {n: ino for n, ino, _ in d}
    assert ents["deep"] == os.stat(m / "a/b/c/deep").st_ino


def test_dir_copy_up_keeps_st_ino(mount, layered):
    m = mount(list(layered))
    inos = {r: os.stat(m / r).st_ino for r in ("a", "a/b", "a/b/c")}
    write(m / "a/b/c/new", "n")      # copies up a, a/b, a/b/c
    os.chmod(m / "a", 0o700)
    for r, i in inos.items():
        assert os.stat(m / r).st_ino == i, r


def test_copy_up_preserves_lower_metadata(mount, lowers):
    (l,) = lowers(1)
    f = write(l / "d1/d2/file", b"payload" * 100, mode=0o4751)
    os.chown(l / "d1/d2/file", 1234, 5678)
    os.chmod(l / "d1/d2/file", 0o4751)   # chown cleared setuid
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "trusted.t", b"tv")
    os.chown(l / "d1/d2", 2222, 3333)
    os.chmod(l / "d1/d2", 0o1750)
    os.setxattr(l / "d1/d2", "user.dirx", b"dv")
    os.utime(f, ns=(1_111_111_111_222_222_222, 1_333_333_333_444_444_444))
    os.utime(l / "d1/d2", ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_002))
    m = mount([l])
    st0 = os.stat(m / "d1/d2/file")
    # data copy-up by a write at the end: everything but size/mtime/ctime stays
    fd = os.open(m / "d1/d2/file", os.O_WRONLY)
    os.close(fd)
    st = os.stat(m / "d1/d2/file")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o4751
    assert st.st_mtime_ns == 1_333_333_333_444_444_444, "open for write changed mtime"
    assert os.getxattr(m / "d1/d2/file", "user.color") == b"blue"
    assert os.getxattr(m / "d1/d2/file", "trusted.t") == b"tv"
    assert rd(m / "d1/d2/file") == b"payload" * 100
    assert st.st_ino == st0.st_ino
    # the parent directory that got copied up keeps its metadata
    dst = os.stat(m / "d1/d2")
    assert (dst.st_uid, dst.st_gid) == (2222, 3333)
    assert stat.S_IMODE(dst.st_mode) == 0o1750
    assert os.getxattr(m / "d1/d2", "user.dirx") == b"dv"
    assert dst.st_mtime_ns == 1_000_000_000_000_000_002


def test_copy_up_symlink_and_special(mount, lowers):
    (l,) = lowers(1)
    symlink(l / "sl", "target/path")
    os.mkfifo(l / "fifo", 0o640)
    os.mknod(l / "nul", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    m = mount([l])
    for n in ("sl", "fifo", "nul"):
        ino = os.lstat(m / n).st_ino
        os.chown(m / n, 4000000, 4000001, follow_symlinks=False)
        st = os.lstat(m / n)
        assert st.st_ino == ino and (st.st_uid, st.st_gid) == (4000000, 4000001), n
    assert os.readlink(m / "sl") == "target/path"
    assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)
    st = os.lstat(m / "nul")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    os.chmod(m / "fifo", 0o600)
    assert stat.S_IMODE(os.lstat(m / "fifo").st_mode) == 0o600


def test_data_copy_up_big_file(mount, lowers):
    (l,) = lowers(1)
    data = os.urandom(8 * MiB + 123)
    write(l / "big", data)
    m = mount([l])
    with open(m / "big", "r+b") as f:
        f.seek(4 * MiB + 7)
        f.write(b"@@@")
    exp = bytearray(data)
    exp[4 * MiB + 7:4 * MiB + 10] = b"@@@"
    assert sha(m / "big") == hashlib.sha256(exp).hexdigest()
    assert os.stat(m / "big").st_size == len(data)


def _store_bytes(pids):
    """Bytes of memory the daemon's upper store (its memfd) has allocated."""
    return sum(st.st_blocks * 512 for pid in pids for _, st in H.memfds(pid).values())


def _files_bytes(m):
    """Bytes in passthrough=upper's private tmpfs (memoverlay-ctl stats)."""
    import json
    r = subprocess.run([str(m.build.dir / "tools" / "memoverlay-ctl"), "stats", str(m.path),
                        "--json"], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(r.stdout)["upper"].get("bytes_in_files", 0)


def test_metadata_copy_up_is_cheap(mount, lowers):
    """chmod/chown/utime/setxattr/link of a 100 MiB lower file copy up
    metadata only: neither the upper's used bytes (statfs) nor the memory
    of the daemon's store (its memfd) grow. Writing into it then stores only
    what is written (lazy copy-up), and reads see both."""
    (l,) = lowers(1)
    block = os.urandom(MiB)
    with open(l / "huge", "wb") as f:
        for _ in range(100):
            f.write(block)
    m = mount([l])
    pids = H.main_daemon_pids(m.pids)
    assert pids, f"no daemon among {m.pids}"
    used0, store0 = H.statfs_used(m), _store_bytes(pids)
    os.chmod(m / "huge", 0o600)
    os.chown(m / "huge", 4000000, 4000001)
    os.utime(m / "huge", ns=(1, 2))
    os.setxattr(m / "huge", "user.meta", b"only")
    os.link(m / "huge", m / "huge2")
    used1, store1, files1 = H.statfs_used(m), _store_bytes(pids), _files_bytes(m)
    assert used1 - used0 < MiB, f"metadata-only copy-up grew used by {used1 - used0} bytes"
    assert store1 - store0 < MiB, \
        f"metadata-only copy-up grew the daemon's store memory by {store1 - store0} bytes"
    assert os.stat(m / "huge").st_size == 100 * MiB
    with open(m / "huge", "rb") as f:
        assert f.read(MiB) == block
        f.seek(99 * MiB)
        assert f.read() == block
    # now a data copy-up, lazily: a 1-byte write stores one block, the rest
    # is still read from the lower file
    fd = os.open(m / "huge", os.O_WRONLY)
    os.pwrite(fd, b"!", 0)
    os.pwrite(fd, b"?" * MiB, 50 * MiB + 7)
    os.close(fd)
    used2 = H.statfs_used(m)
    assert MiB <= used2 - used1 < 2 * MiB, \
        f"1 MiB + 1 byte written into a 100 MiB lower file: statfs used grew by {used2 - used1}"
    # (the store measure above does see data landing in the store; with
    # passthrough=upper the store is the private tmpfs, which stats counts)
    if "passthrough=upper" in m.build.opts:
        grew = _files_bytes(m) - files1
    else:
        grew = _store_bytes(pids) - store1
    assert grew >= MiB, f"1 MiB written, but the daemon's store grew by {grew} bytes"
    want = bytearray(block * 100)
    want[0:1] = b"!"
    want[50 * MiB + 7:51 * MiB + 7] = b"?" * MiB
    assert rd(m / "huge2") == want
    assert rd(l / "huge") == block * 100, "the lower file changed"
    # and deleting it gives the space back, once the daemon has the RELEASE
    # of the closed file (FUSE sends it asynchronously after close())
    os.unlink(m / "huge")
    os.unlink(m / "huge2")
    assert H.wait_for(lambda: H.statfs_used(m) - used0 < MiB, H.DEADLINE), \
        f"unlinking the copy left {H.statfs_used(m) - used0} bytes used"


@pytest.mark.parametrize("opts", ["", "nowriteback"])
def test_lazy_copy_up_reads_both_layers(opts, mount, lowers, drop_caches):
    """After a first write into a lower file only the written bytes are in
    the upper layer; every read (an fd opened before the write, a new one,
    mmap, copy_file_range, after dropping caches) sees written bytes where
    they were written and lower bytes elsewhere, through truncates too."""
    import mmap
    (l,) = lowers(1)
    with open(l / "f", "wb") as f:
        f.write(os.urandom(MiB))
        f.seek(2 * MiB)           # a hole in the middle
        f.write(os.urandom(MiB))
    orig = rd(l / "f")
    m = mount([l], opts)
    p = m / "f"
    model = bytearray(orig)
    early = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(early, 100, 5000) == orig[5000:5100]
        fd = os.open(p, os.O_RDWR)
        try:
            for off, data in [(4095, b"A"), (8190, b"0123456789"), (MiB + 3, os.urandom(100_000)),
                              (3 * MiB - 5, b"tail!")]:
                assert os.pwrite(fd, data, off) == len(data)
                model[off:off + len(data)] = data
            assert os.pread(fd, 20, 8185) == bytes(model[8185:8205])
            # copy_file_range into the partly copied file
            (m / "src").write_bytes(b"S" * 50_000)
            with open(m / "src", "rb") as src:
                n = os.copy_file_range(src.fileno(), fd, 50_000, 0, 2 * MiB - 1000)
            model[2 * MiB - 1000:2 * MiB - 1000 + n] = b"S" * n
            assert n == 50_000
            os.fsync(fd)
        finally:
            os.close(fd)
        assert os.pread(early, len(model), 0) == bytes(model), "fd opened before the write"
    finally:
        os.close(early)
    assert rd(p) == bytes(model), "a new fd"
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == bytes(model), "mmap"
    # copy_file_range out of it (the kernel falls back to reading through us)
    with open(p, "rb") as a, open(m / "copy", "wb") as b:
        left = len(model)
        while left:
            got = os.copy_file_range(a.fileno(), b.fileno(), left)
            assert got > 0
            left -= got
    assert rd(m / "copy") == bytes(model)
    drop_caches()
    assert rd(p) == bytes(model), "after dropping caches"
    assert os.stat(p).st_blocks * 512 >= 2 * MiB, "lower bytes count in st_blocks"
    # truncate into the lower part, then grow again: zeros, not lower bytes
    os.truncate(p, MiB + 7)
    os.truncate(p, 3 * MiB)
    model = model[:MiB + 7] + bytes(3 * MiB - (MiB + 7))
    assert rd(p) == bytes(model), "truncate down then up"
    drop_caches()
    assert rd(p) == bytes(model)
    if opts == "nowriteback":  # exact holes only without the kernel write cache
        fd = os.open(p, os.O_RDONLY)
        try:
            assert os.lseek(fd, 0, os.SEEK_DATA) == 0
            hole = os.lseek(fd, 0, os.SEEK_HOLE)
            assert MiB + 7 <= hole <= MiB + 8192, f"SEEK_HOLE {hole}"
        finally:
            os.close(fd)
        assert rd(p) == bytes(model), "after SEEK_DATA copied in the rest"
    assert rd(l / "f") == orig, "the lower file changed"


@pytest.mark.parametrize("opts", ["", "nowriteback"])
def test_scattered_writes_finish_the_copy_up(opts, mount, lowers, drop_caches):
    """Hundreds of scattered writes into a lower file (more ranges than the
    lazy copy keeps, see cow.h) finish the copy-up: the data is all in the
    upper layer then, lower holes stay holes, and nothing written is lost,
    also what was written past the lower file's end."""
    import random
    (l,) = lowers(1)
    with open(l / "f", "wb") as f:
        f.write(os.urandom(2 * MiB))
        f.seek(6 * MiB)               # a 4 MiB hole, then data
        f.write(os.urandom(MiB))
    orig = rd(l / "f")
    m = mount([l], opts)
    p = m / "f"
    model = bytearray(orig)
    rnd = random.Random(5)
    used0 = H.statfs_used(m)
    fd = os.open(p, os.O_RDWR)
    try:
        for i in range(600):
            off = rnd.randrange(0, len(model) + 100_000)
            data = bytes([i % 251 + 1]) * rnd.randrange(1, 300)
            os.pwrite(fd, data, off)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
            if i == 300:
                assert os.pread(fd, len(model), 0) == bytes(model), "halfway"
        os.fsync(fd)
    finally:
        os.close(fd)
    assert rd(p) == bytes(model)
    drop_caches()
    assert rd(p) == bytes(model), "after dropping caches"
    used = H.statfs_used(m) - used0
    assert 3 * MiB <= used < 6 * MiB, f"copy-up finished: {used} bytes used (lower hole kept?)"
    assert rd(l / "f") == orig, "the lower file changed"


def test_sparse_lower_copy_up_stays_sparse(mount, lowers):
    (l,) = lowers(1)
    with open(l / "sparse", "wb") as f:
        f.truncate(256 * MiB)
        f.seek(128 * MiB)
        f.write(b"middle")
    # exact SEEK_DATA needs writes to reach the daemon at once (no kernel write cache)
    m = mount([l], "nowriteback")
    used0 = H.statfs_used(m)
    with open(m / "sparse", "r+b") as f:
        f.write(b"S")
    used1 = H.statfs_used(m)
    assert used1 - used0 < 32 * MiB, \
        f"copy-up of a 256 MiB sparse file used {(used1 - used0) >> 20} MiB"
    with open(m / "sparse", "rb") as f:
        assert f.read(2) == b"S\0"
        f.seek(128 * MiB)
        assert f.read(6) == b"middle"
    fd = os.open(m / "sparse", os.O_RDONLY)
    assert os.lseek(fd, 4096, os.SEEK_DATA) >= 128 * MiB - 4096
    os.close(fd)


def test_lower_hardlinks_stay_one_inode(mount, lowers):
    (l,) = lowers(1)
    a = write(l / "x/a", "shared")
    mkdir(l / "y")
    os.link(a, l / "y/b")
    os.link(a, l / "c")
    m = mount([l])
    names = [m / "x/a", m / "y/b", m / "c"]
    ino = os.stat(names[0]).st_ino
    assert all(os.stat(n).st_ino == ino for n in names)
    assert all(os.stat(n).st_nlink == 3 for n in names)
    with open(m / "y/b", "ab") as f:
        f.write(b"+written via b")
    for n in names:
        assert rd(n) == b"shared+written via b", n
        st = os.stat(n)
        assert st.st_ino == ino and st.st_nlink == 3, n
    os.chmod(m / "c", 0o600)
    assert stat.S_IMODE(os.stat(m / "x/a").st_mode) == 0o600
    os.setxattr(m / "x/a", "user.via", b"a")
    assert os.getxattr(m / "c", "user.via") == b"a"
    os.unlink(m / "x/a")
    assert os.stat(m / "c").st_nlink == 2 and os.stat(m / "y/b").st_nlink == 2
    os.link(m / "c", m / "x/a2")
    assert os.stat(m / "y/b").st_nlink == 3
    assert rd(m / "x/a2") == b"shared+written via b"


def test_lower_hardlinks_truncate_via_one_name(mount, lowers):
    (l,) = lowers(1)
    a = write(l / "a", "0123456789")
    os.link(a, l / "b")
    m = mount([l])
    os.truncate(m / "b", 4)
    assert rd(m / "a") == b"0123"
    fd = os.open(m / "a", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    assert rd(m / "b") == b"new"


CONCURRENT = r"""
import os, sys
p, off, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
fd = os.open(p, os.O_WRONLY)
for i in range(200):
    os.pwrite(fd, tag, off + i)
os.close(fd)
"""


def test_concurrent_copy_up(mount, lowers):
    (l,) = lowers(1)
    write(l / "f", b"." * 4096)
    m = mount([l])
    procs = [subprocess.Popen([PY, "-c", CONCURRENT, str(m / "f"), str(off), tag])
             for off, tag in ((0, "A"), (1000, "B"), (2000, "C"), (3000, "D"))]
    for p in procs:
        assert p.wait(timeout=60) == 0
    data = rd(m / "f")
    assert len(data) == 4096
    for off, tag in ((0, b"A"), (1000, b"B"), (2000, b"C"), (3000, b"D")):
        assert data[off:off + 200] == tag * 200, f"writes of {tag} lost (copy-up raced)"
    assert data[200:1000] == b"." * 800


def test_copy_up_then_lower_names_unchanged(mount, lowers):
    """Whiteouts and copy-ups in one directory; the merged listing is exact."""
    (l,) = lowers(1)
    for i in range(50):
        write(l / "d" / f"f{i:02}", f"{i}")
    m = mount([l])
    for i in range(0, 50, 3):
        os.unlink(m / "d" / f"f{i:02}")
    for i in range(1, 50, 3):
        with open(m / "d" / f"f{i:02}", "ab") as f:
            f.write(b"!")
    names = sorted(os.listdir(m / "d"))
    assert names == [f"f{i:02}" for i in range(50) if i % 3]
    for i in range(50):
        if i % 3 == 1:
            assert rd(m / "d" / f"f{i:02}") == f"{i}!".encode()
        elif i % 3 == 2:
            assert rd(m / "d" / f"f{i:02}") == f"{i}".encode()

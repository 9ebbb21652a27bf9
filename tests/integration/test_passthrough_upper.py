"""-o passthrough=upper (fs/upper_files.c, fs/passthrough.c): on a writable
mount of a root daemon, new files (and O_TRUNC opens) keep their data in
files of their own in a private tmpfs, and those files back every open of
them: the kernel reads and writes them itself, without READ or WRITE
requests (the -d log shows which requests came).

What must hold:
- the data, size, times and st_blocks users see are the tmpfs file's; a
  reader and a writer of one file (fds, mmap) see each other's bytes;
- files the mount cannot back still work through the daemon: lower files
  opened for writing (a lazy copy-up stays lazy), and files with setuid or
  setgid, whose writes must clear those bits; setuid set while the kernel
  writes a file itself is cleared by its next write (capabilities too,
  which the kernel removes itself);
- size= holds for the sum of both stores; the daemon's fds stay few however
  many files there are;
- upperdir= gets what the kernel wrote; lower layers stay byte for byte
  unchanged (the `mount` fixture checks every layer at teardown);
- a build without passthrough refuses the option before mounting; where the
  daemon may not register backing files (a plain user, a user namespace) or
  the kernel has no passthrough, the mount works as without the option.
"""

import errno
import mmap
import os
import struct
import subprocess
import time

import pytest

import helpers as H
from helpers import write
from test_passthrough import Foreground, build_has_passthrough, passthrough_expected

pytestmark = pytest.mark.memoverlay_only

MiB = 1024 * 1024
CAPS = "security.capability"
# struct vfs_cap_data, revision 2: CAP_NET_BIND_SERVICE, permitted and effective
CAP_BLOB = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.fixture
def backed(memoverlay_build):
    if not passthrough_expected(memoverlay_build):
        pytest.skip("no FUSE passthrough in this build or kernel")
    return memoverlay_build


@pytest.fixture
def layer(lowers):
    [l] = lowers(1)
    write(l / "lower", os.urandom(2 * MiB))
    write(l / "dir/small", b"small\n")
    return l


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def test_new_and_truncated_files_are_written_without_requests(backed, layer, tmp_path):
    before = H.tree_records(layer)
    fg = Foreground(backed, layer, tmp_path / "m", "passthrough=upper", tmp_path / "log")
    try:
        data = os.urandom(4 * MiB)
        t0 = time.time()
        write(fg.mnt / "new", data)
        with open(fg.mnt / "lower", "r+b") as f:   # O_TRUNC: starts in the tmpfs
            f.truncate(0)
        with open(fg.mnt / "lower", "wb") as f:
            f.write(b"replaced\n" * 1000)
        assert read_all(fg.mnt / "new") == data
        st = os.stat(fg.mnt / "new")
        assert st.st_size == len(data)
        assert st.st_blocks * 512 >= len(data)
        assert st.st_mtime >= t0 - 1
        assert read_all(fg.mnt / "lower") == b"replaced\n" * 1000
        writes, reads = fg.requests("WRITE"), fg.requests("READ")
    finally:
        assert fg.stop() == 0
    assert (writes, reads) == (0, 0), "data went through the daemon: not backed"
    assert H.tree_records(layer) == before


def test_reader_and_writer_share_the_file(backed, layer, mount):
    m = mount([layer], "passthrough=upper")
    p = m / "shared"
    write(p, b"\0" * 8192)
    with open(p, "rb") as r, open(p, "r+b") as w:
        w.seek(4096)
        w.write(b"from the writer")
        w.flush()
        r.seek(4096)
        assert r.read(15) == b"from the writer"
        with mmap.mmap(w.fileno(), 8192) as mm:
            mm[0:6] = b"mapped"
            mm.flush()
        r.seek(0)
        assert r.read(6) == b"mapped"
    assert read_all(p)[:6] == b"mapped"
    # a hard link is the same inode: one backing file
    os.link(p, m / "alias")
    with open(m / "alias", "r+b") as f:
        f.write(b"ALIAS!")
    assert read_all(p)[:6] == b"ALIAS!"
    assert os.stat(p).st_nlink == 2


def test_times_follow_the_kernels_writes(backed, layer, mount):
    m = mount([layer], "passthrough=upper")
    p = m / "f"
    write(p, b"one")
    old = 1_000_000_000
    os.utime(p, ns=(old, old))
    assert os.stat(p).st_mtime_ns == old
    ctime = os.stat(p).st_ctime_ns
    with open(p, "ab") as f:
        f.write(b" two")
    st = os.stat(p)
    assert st.st_size == 7
    assert st.st_mtime_ns > old
    assert st.st_ctime_ns >= ctime
    assert read_all(p) == b"one two"


def test_lower_file_opened_for_writing_goes_through_the_daemon(backed, layer, tmp_path):
    """Not backed: a lazy copy-up (one 4 KiB write into a lower file) stays
    lazy, its written bytes in a sparse file beside the lower file's, and a
    read-only fd opened first sees them."""
    import json
    orig = read_all(layer / "lower")
    before = H.tree_records(layer)
    fg = Foreground(backed, layer, tmp_path / "m", "passthrough=upper", tmp_path / "log")
    try:
        with open(fg.mnt / "lower", "rb") as r, open(fg.mnt / "lower", "r+b") as w:
            w.seek(MiB)
            w.write(b"x" * 4096)
            w.flush()
            r.seek(MiB)
            assert r.read(4096) == b"x" * 4096
        got = read_all(fg.mnt / "lower")
        writes = fg.requests("WRITE")
        r = subprocess.run([str(backed.dir / "tools" / "memoverlay-ctl"), "stats", str(fg.mnt),
                            "--json"], capture_output=True, text=True, timeout=60)
    finally:
        assert fg.stop() == 0
    assert got == orig[:MiB] + b"x" * 4096 + orig[MiB + 4096:]
    assert writes >= 1
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["fuse"]["passthrough_upper"] is True
    assert stats["upper"]["lazy_files"] == 1
    assert stats["upper"]["bytes_in_files"] <= 64 * 1024   # 4 KiB written, not 2 MiB copied
    assert H.tree_records(layer) == before


def test_setuid_files_are_cleared_by_a_plain_users_write(backed, layer, mount):
    uid, gid, _ = H.ensure_test_user()
    with H.shared_tmpdir("mo-ptu-suid.") as (d, left):
        os.chmod(d, 0o755)
        m = mount([layer], "passthrough=upper", mountpoint=d / "mnt")
        os.chmod(m.path, 0o777)
        try:
            setuid_cleared(m, uid, gid)
        finally:
            mount.unmount(m)
    assert not left, f"left behind: {left}"


def setuid_cleared(m, uid, gid):
    # setuid from the start: never backed, the daemon clears it on write
    write(m / "s1", b"")
    os.chmod(m / "s1", 0o4777)
    r = subprocess.run(H.as_user(uid, gid) + ["sh", "-c", f"echo hi >> {m / 's1'}"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert os.stat(m / "s1").st_mode & 0o7777 == 0o777
    # setuid set while a plain user's backed fd is open: its next write clears it
    def set_suid(p):
        os.chmod(p, 0o6777)
        assert os.stat(p).st_mode & 0o7777 == 0o6777
    st = written_while_backed(m / "s2", set_suid, uid, gid)
    assert st.st_mode & 0o7777 == 0o777
    assert st.st_size == 4
    # capabilities given while it is open: the kernel itself removes them
    # at its write (REMOVEXATTR), as kernel overlayfs would
    def set_caps(p):
        os.setxattr(p, CAPS, CAP_BLOB)
        assert os.getxattr(p, CAPS) == CAP_BLOB
    st = written_while_backed(m / "s3", set_caps, uid, gid)
    assert CAPS not in os.listxattr(m / "s3")
    assert st.st_mode & 0o7777 == 0o666 and st.st_size == 4


def written_while_backed(p, change, uid, gid):
    """A plain user opens p (new, 0666: backed) for writing; then change(p)
    runs as root, then the user writes 4 bytes. p's stat after that."""
    write(p, b"")
    os.chmod(p, 0o666)
    script = ("import os,sys,time\n"
              f"fd=os.open({str(p)!r}, os.O_WRONLY)\n"
              "sys.stdout.write('open\\n'); sys.stdout.flush()\n"
              "sys.stdin.readline()\n"
              "os.write(fd, b'data'); os.close(fd)\n")
    proc = subprocess.Popen(H.as_user(uid, gid) + ["/usr/bin/python3", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"open\n"
        change(p)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return os.stat(p)


def test_size_limit_holds_exactly(backed, layer, mount):
    m = mount([layer], "passthrough=upper,size=16m")
    # a lazy copy-up's written blocks (not backed, written by the daemon)
    with open(m / "lower", "r+b") as f:
        f.write(os.urandom(2 * MiB))
    # the tmpfs: new files until the limit
    written = 0
    with pytest.raises(OSError) as e:
        for k in range(100):
            with open(m / f"n{k}", "wb") as f:
                for _ in range(4):
                    f.write(b"z" * MiB)
                    written += MiB
    assert e.value.errno == errno.ENOSPC
    assert 13 * MiB <= written <= 14 * MiB
    sv = os.statvfs(m.path)
    used = (sv.f_blocks - sv.f_bfree) * sv.f_frsize
    assert written + 2 * MiB <= used <= 16 * MiB
    # space comes back with the files
    for k in range(100):
        try:
            os.unlink(m / f"n{k}")
        except FileNotFoundError:
            break
    write(m / "again", b"a" * (8 * MiB))
    assert os.path.getsize(m / "again") == 8 * MiB


def test_daemon_fds_stay_few(backed, layer, mount):
    m = mount([layer], "passthrough=upper")
    [pid] = H.main_daemon_pids(m.pids) or m.pids[:1]
    for k in range(3000):
        write(m / f"f{k}", b"%d\n" % k)
    held = [open(m / f"f{k}", "r+b") for k in range(200)]
    try:
        for k, f in enumerate(held):
            f.write(b"w")
        assert H.fd_count(pid) < 100
    finally:
        for f in held:
            f.close()
    assert read_all(m / "f7") == b"w\n"


def test_copy_range_seek_and_truncate(backed, layer, mount):
    m = mount([layer], "passthrough=upper")
    data = os.urandom(MiB)
    write(m / "src", data)
    with open(m / "src", "rb") as s, open(m / "dst", "wb") as d:
        assert os.copy_file_range(s.fileno(), d.fileno(), MiB) == MiB
    assert read_all(m / "dst") == data
    with open(m / "sparse", "wb") as f:
        f.truncate(8 * MiB)
        f.seek(4 * MiB)
        f.write(b"data")
    fd = os.open(m / "sparse", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 4 * MiB
        assert os.lseek(fd, 4 * MiB, os.SEEK_HOLE) >= 4 * MiB + 4
    finally:
        os.close(fd)
    os.truncate(m / "dst", 10)
    assert read_all(m / "dst") == data[:10]
    assert os.stat(m / "sparse").st_blocks * 512 < 8 * MiB


def test_upperdir_gets_what_the_kernel_wrote(backed, layer, mount, tmp_path):
    up, work = tmp_path / "upper", tmp_path / "work"
    up.mkdir()
    work.mkdir()
    m = mount([layer], f"passthrough=upper,upperdir={up},workdir={work},writeback_delay=off")
    data = os.urandom(MiB)
    with open(m / "f", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())    # a write-back now, with the fd still open
        assert read_all(up / "f") == data
        f.write(b"tail")
    mount.unmount(m)
    assert read_all(up / "f") == data + b"tail"


def refusal(build, layer, mnt, value):
    """The one line a start with passthrough=VALUE printed; nothing mounted."""
    r = subprocess.run([str(build.exe), str(mnt), "-o", f"lowerdir={layer},passthrough={value}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert not H.is_mounted(mnt)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr


def test_build_without_passthrough_refuses(memoverlay_build, layer, mnt):
    if build_has_passthrough(memoverlay_build):
        pytest.skip("this build has passthrough")
    assert "passthrough=upper" in refusal(memoverlay_build, layer, mnt, "upper")


def test_bad_value_is_named(memoverlay_build, layer, mnt):
    assert "'uper'" in refusal(memoverlay_build, layer, mnt, "uper")


def test_root_of_a_user_namespace_works_without_it(memoverlay_build):
    """Where backing files cannot be registered the mount is what it is
    without the option (the write cache included)."""
    if not build_has_passthrough(memoverlay_build):
        pytest.skip("this build has no passthrough")
    with H.shared_tmpdir("mo-ptu-ns.") as (d, left):
        l = d / "lower"
        write(l / "f", b"lower\n")
        mnt = d / "mnt"
        mnt.mkdir()
        ctl = memoverlay_build.dir / "tools" / "memoverlay-ctl"
        script = (
            f"{memoverlay_build.exe} {mnt} -o lowerdir={l},passthrough=upper -f 2> {d}/err &\n"
            + H.sh_wait_mounted(mnt) +
            f"echo new > {mnt}/n\n"
            f"cat {mnt}/n {mnt}/f\n"
            f"{ctl} stats {mnt} > {d}/stats\n"
            f"umount {mnt}\n"
            "wait\n")
        r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        err = open(d / "err").read()
        assert r.returncode == 0, r.stderr.decode(errors="replace") + err
        assert r.stdout == b"new\nlower\n"
        assert err == ""
        stats = open(d / "stats").read()
        assert "writeback cache on" in stats and "upper files" not in stats, stats
    assert not left, f"left behind: {left}"

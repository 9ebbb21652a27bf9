"""The upper layer's default size limit (issue 11, part 3), as tmpfs: half of
RAM, and at most half of the daemon's memory cgroup limit; `size=0` or
`size=unlimited` opt out; `df` shows it. Past a limit a writer is told:
ENOSPC from write(2) (small limits: no write cache), or at worst from
fsync/close (limits large enough for the kernel's write cache to stay on);
the daemon keeps serving, and in a memory-limited cgroup it is never
OOM-killed."""

import errno
import os
import subprocess

import pytest

import helpers as H
from helpers import write

pytestmark = pytest.mark.memoverlay_only

MiB = 1 << 20
BLOCK = 4096


def ram_bytes():
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def statfs_size(m):
    s = os.statvfs(m)
    return s.f_blocks * s.f_frsize


def dirty_cache_bound():
    """What memory_budget.c computes: 1% of the dirty threshold, twice, + 4 MiB."""
    def read(p):
        try:
            return int(open(p).read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0
    threshold = read("/proc/sys/vm/dirty_bytes") or ram_bytes() // 100 * (read("/proc/sys/vm/dirty_ratio") or 20)
    return 2 * (threshold // 100) + 4 * MiB


def fill(path, chunk=MiB, limit_bytes=None):
    """Writes chunks until an error; returns (bytes written by write(2), where
    the first error came: 'write', 'fsync', 'close' or None, errno)."""
    data = b"\x5a" * chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, where, err = 0, None, 0
    try:
        while limit_bytes is None or written < limit_bytes:
            try:
                n = os.write(fd, data)
            except OSError as e:
                where, err = "write", e.errno
                break
            written += n
        if where is None:
            try:
                os.fsync(fd)
            except OSError as e:
                where, err = "fsync", e.errno
    finally:
        try:
            os.close(fd)
        except OSError as e:
            if where is None:
                where, err = "close", e.errno
    return written, where, err


# --------------------------------------------------------------------------


def test_default_is_half_of_ram_and_df_shows_it(mount, lowers):
    (l,) = lowers(1)
    m = mount([l])
    want = ram_bytes() // 2
    cg = _own_memory_limit()
    if cg:
        want = min(want, cg // 2)
    assert abs(statfs_size(m) - want) < BLOCK, (statfs_size(m), want)
    r = subprocess.run(["df", "-B1", "--output=size", str(m)], capture_output=True, text=True,
                       timeout=60, check=True)
    assert abs(int(r.stdout.split()[-1]) - want) < BLOCK, r.stdout


def _own_memory_limit():
    found = H.memory_cgroup_root()
    if not found:
        return 0
    kind, d = found
    best = 0
    while d.count("/") >= 3:
        f = os.path.join(d, "memory.max" if kind == "v2" else "memory.limit_in_bytes")
        try:
            v = open(f).read().strip()
            if v != "max" and int(v) < 1 << 60 and (not best or int(v) < best):
                best = int(v)
        except (OSError, ValueError):
            pass
        d = os.path.dirname(d)
    return best


@pytest.mark.parametrize("word", ["size=0", "size=unlimited"])
def test_opt_out_words_accepted(mount, lowers, word):
    (l,) = lowers(1)
    m = mount([l], word)
    write(m / "f", b"x" * MiB)
    assert (m / "f").stat().st_size == MiB


def test_bad_size_word_refused(memoverlay_build, tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "m").mkdir()
    r = subprocess.run([*memoverlay_build.cmd, "-o", f"lowerdir={tmp_path / 'l'},size=lots",
                        str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "'lots'" in r.stderr, r.stderr
    assert not H.is_mounted(tmp_path / "m")


def test_memory_cgroup_caps_the_default_and_filling_gives_enospc(cgroup, mount, lowers,
                                                                  memoverlay_build):
    """In a cgroup limited to 512 MiB the default is 256 MiB (df says so);
    filling it gets ENOSPC from write(2) (a limit this small runs without the
    write cache), the daemon survives, is never OOM-killed, and serves on."""
    limit = 512 * MiB
    cg = cgroup(limit)
    (l,) = lowers(1)
    write(l / "lf", "lower")
    mp = mount._new_dir("mnt")
    m = mount([l], mountpoint=mp, argv=cg.wrap(mount.argv([l], "", mp)))
    assert abs(statfs_size(m) - limit // 2) < BLOCK, statfs_size(m)
    written, where, err = fill(m / "big")
    assert (where, err) == ("write", errno.ENOSPC), (written, where, err)
    assert limit // 2 - 4 * MiB <= written <= limit // 2, written
    assert all(H.pid_alive(p) for p in m.pids), "daemon died"
    assert cg.oom_kills() == 0
    peak = cg.peak()
    assert peak is None or peak < limit, peak
    assert (m / "lf").read_text() == "lower"
    os.unlink(m / "big")
    write(m / "again", b"y" * (8 * MiB))
    assert (m / "again").read_bytes() == b"y" * (8 * MiB)


def test_unlimited_in_a_memory_cgroup_is_not_capped(cgroup, mount, lowers):
    """size=unlimited opts out of the default: 300 MiB fit although the
    default there would be 256 MiB."""
    cg = cgroup(768 * MiB)
    (l,) = lowers(1)
    mp = mount._new_dir("mnt")
    m = mount([l], mountpoint=mp, argv=cg.wrap(mount.argv([l], "size=unlimited", mp)))
    written, where, err = fill(m / "big", limit_bytes=300 * MiB)
    assert (written, where, err) == (300 * MiB, None, 0)
    assert cg.oom_kills() == 0
    os.unlink(m / "big")


def test_enospc_at_limit_with_write_cache(mount, lowers, memoverlay_build):
    """A limit large enough for the kernel's write cache to stay on: write(2)
    is cached, so the writer past the limit hears ENOSPC at fsync (or close)
    -- never silently -- and what fitted reads back intact; the daemon
    serves on and the space comes back when the file goes."""
    if "passthrough=upper" in memoverlay_build.opts:
        pytest.skip("passthrough=upper has no write cache (ENOSPC comes at write(2): "
                    "test_passthrough_upper.py)")
    size = 16 * dirty_cache_bound()
    size = (size + MiB - 1) // MiB * MiB
    if size > ram_bytes() // 4:
        pytest.skip(f"a write-cached limit here is {size >> 20} MiB, too much of this "
                    f"machine's {ram_bytes() >> 20} MiB to fill in a test")
    (l,) = lowers(1)
    m = mount([l], f"size={size}")
    assert statfs_size(m) == size
    written, where, err = fill(m / "big", limit_bytes=size + 64 * MiB)
    assert written == size + 64 * MiB, "a write(2) failed: the write cache is off?"
    assert (where, err) in (("fsync", errno.ENOSPC), ("close", errno.ENOSPC)), (where, err)
    assert os.statvfs(m).f_bavail < (size // 100) // BLOCK
    with open(m / "big", "rb") as f:
        for off in (0, size // 2, size - 2 * MiB):
            f.seek(off)
            assert f.read(MiB) == b"\x5a" * MiB, f"data at {off} lost"
    assert all(H.pid_alive(p) for p in m.pids)
    os.unlink(m / "big")
    assert os.statvfs(m).f_bavail * BLOCK > size - 4 * MiB
    write(m / "after", b"z" * MiB)
    assert (m / "after").read_bytes() == b"z" * MiB

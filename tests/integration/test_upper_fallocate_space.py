"""fallocate(2) promises that the range can be written: as in tmpfs, it
reserves real memory in the upper store, and where that is not there --
past size=, past the default limit, past the memory the machine or the
daemon's memory cgroup can still give -- it fails with ENOSPC and
allocates nothing (POSIX corners issue, item 1)."""

import errno
import os

import pytest

import helpers as H

pytestmark = pytest.mark.memoverlay_only

MiB = 1 << 20
WRITEBACK = ["", "nowriteback"]


def used(m):
    s = os.statvfs(m)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def assert_refused(m, name, length, mode=0):
    """fallocate of LENGTH into a new file: ENOSPC, and nothing allocated."""
    before = used(m)
    fd = os.open(m / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert H.errno_of(H.fallocate, fd, mode, 0, length) == errno.ENOSPC
        st = os.fstat(fd)
        assert (st.st_size, st.st_blocks) == (0, 0), (st.st_size, st.st_blocks)
    finally:
        os.close(fd)
    assert used(m) == before, (used(m), before)
    os.unlink(m / name)


def assert_reserved(m, name, length):
    """fallocate of LENGTH succeeds, counts in df, reads zeros, and goes
    back when the file goes."""
    before = used(m)
    fd = os.open(m / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        H.fallocate(fd, 0, 0, length)
        st = os.fstat(fd)
        assert st.st_size == length and st.st_blocks * 512 >= length
        assert os.pread(fd, 4096, length - 4096) == bytes(4096)
    finally:
        os.close(fd)
    assert used(m) - before >= length
    os.unlink(m / name)
    assert used(m) == before


@pytest.mark.parametrize("opts", WRITEBACK)
def test_past_the_default_limit(mount, lowers, opts):
    (l,) = lowers(1)
    m = mount([l], opts)
    avail = os.statvfs(m).f_bavail * os.statvfs(m).f_frsize
    assert_refused(m, "ouch", 2 * avail)
    assert_refused(m, "ouch", 2 * avail, H.FALLOC_FL_KEEP_SIZE)
    assert_reserved(m, "fits", 8 * MiB)


@pytest.mark.parametrize("opts", WRITEBACK)
def test_past_size(mount, lowers, opts):
    (l,) = lowers(1)
    m = mount([l], ",".join(filter(None, [opts, "size=64m"])))
    assert_refused(m, "ouch", 128 * MiB)
    assert_refused(m, "ouch", 64 * MiB + 4096, H.FALLOC_FL_ZERO_RANGE)
    assert_reserved(m, "fits", 32 * MiB)
    # a file that fills the rest, then one block more
    fd = os.open(m / "rest", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        H.fallocate(fd, 0, 0, 64 * MiB)
        assert H.errno_of(H.fallocate, fd, 0, 64 * MiB, 4096) == errno.ENOSPC
        assert os.fstat(fd).st_size == 64 * MiB
    finally:
        os.close(fd)


@pytest.mark.parametrize("opts", WRITEBACK)
def test_past_the_machines_memory_without_a_limit(mount, lowers, opts):
    """size=0: no limit of ours, but not more than the machine has."""
    (l,) = lowers(1)
    m = mount([l], ",".join(filter(None, [opts, "size=0"])))
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert_refused(m, "ouch", 2 * ram)
    assert all(H.pid_alive(p) for p in m.pids)
    assert_reserved(m, "fits", 8 * MiB)


def test_past_the_memory_cgroup_without_a_limit(cgroup, mount, lowers):
    """size=0 in a cgroup limited to 256 MiB: 512 MiB is refused, not
    OOM-killed; 64 MiB is really reserved (charged to the cgroup now,
    not at the first write)."""
    cg = cgroup(256 * MiB)
    (l,) = lowers(1)
    mp = mount._new_dir("mnt")
    m = mount([l], mountpoint=mp, argv=cg.wrap(mount.argv([l], "size=0", mp)))
    assert_refused(m, "ouch", 512 * MiB)
    base = cg.usage()
    fd = os.open(m / "fits", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        H.fallocate(fd, 0, 0, 64 * MiB)
        assert cg.usage() - base >= 60 * MiB, (base, cg.usage())
    finally:
        os.close(fd)
    assert cg.oom_kills() == 0
    assert all(H.pid_alive(p) for p in m.pids)
    os.unlink(m / "fits")

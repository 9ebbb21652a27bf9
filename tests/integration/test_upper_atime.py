"""atime of upper files as tmpfs and kernel overlayfs keep it (POSIX
corners issue, item 3): with relatime (the default) a read moves atime when
it is not newer than mtime or ctime -- also when every byte comes from the
kernel's page cache and no READ reaches the daemon (the open counts);
noatime never moves it, strictatime always; opening for writing only is
not a read; lower-only files show their lower file's atime (nothing is
written to a layer). Times are set with utimensat, not waited for."""

import os
import time

import pytest

import helpers as H
from helpers import write, rd

pytestmark = pytest.mark.memoverlay_only

WRITEBACK = ["", "nowriteback"]
S = 1_000_000_000


def set_times(p, atime_ns, mtime_ns):
    os.utime(p, ns=(atime_ns, mtime_ns))


@pytest.fixture(params=WRITEBACK)
def cached_file(request, mount, lowers):
    """(mount factory args) -> an upper file whose data is in the page cache."""
    def make(atime_opt):
        (l,) = lowers(1)
        m = mount([l], ",".join(filter(None, [request.param, atime_opt])))
        f = m / "f"
        write(f, b"data" * 1024)
        rd(f)  # now in the kernel's page cache (keep_cache)
        return m, f
    return make


def test_relatime_moves_atime_older_than_mtime(cached_file):
    m, f = cached_file("")
    now = time.time_ns()
    set_times(f, now - 20 * S, now - 10 * S)
    assert rd(f) == b"data" * 1024
    st = os.stat(f)
    assert st.st_atime_ns >= st.st_mtime_ns, (st.st_atime_ns, st.st_mtime_ns)
    assert st.st_atime_ns >= now - S


def test_relatime_keeps_a_recent_atime(cached_file):
    m, f = cached_file("")
    now = time.time_ns()
    future = now + 3600 * S  # newer than mtime and ctime, not a day old
    set_times(f, future, now - 10 * S)
    rd(f)
    assert os.stat(f).st_atime_ns == future


def test_relatime_moves_a_day_old_atime(cached_file):
    m, f = cached_file("")
    now = time.time_ns()
    # mtime and ctime older still: only the age moves it
    set_times(f, now - 2 * 86400 * S, now - 3 * 86400 * S)
    write_ctime = os.stat(f).st_ctime_ns
    rd(f)
    st = os.stat(f)
    assert st.st_atime_ns >= now - S and st.st_ctime_ns == write_ctime


def test_noatime_never_moves_it(cached_file):
    m, f = cached_file("noatime")
    now = time.time_ns()
    set_times(f, now - 20 * S, now - 10 * S)
    rd(f)
    assert os.stat(f).st_atime_ns == now - 20 * S


def test_strictatime_always_moves_it(cached_file):
    m, f = cached_file("strictatime")
    now = time.time_ns()
    future = now + 3600 * S
    set_times(f, future, now - 10 * S)
    rd(f)
    assert os.stat(f).st_atime_ns < future


def test_open_for_writing_only_is_not_a_read(cached_file):
    m, f = cached_file("")
    now = time.time_ns()
    set_times(f, now - 20 * S, now - 10 * S)
    fd = os.open(f, os.O_WRONLY)
    os.close(fd)
    assert os.stat(f).st_atime_ns == now - 20 * S


def test_lower_only_file_shows_its_lower_atime(mount, lowers):
    """Not copied up by a read: the merged view shows the lower file's own
    atime (which the lower filesystem keeps by its own mount flags, as
    under kernel overlayfs)."""
    (l,) = lowers(1)
    write(l / "lf", b"lower")
    old = time.time_ns() - 20 * S
    os.utime(l / "lf", ns=(old, old + S))
    before = H.tree_records(l)
    m = mount([l])
    assert rd(m / "lf") == b"lower"
    assert os.stat(m / "lf").st_atime_ns == os.stat(l / "lf").st_atime_ns
    assert H.tree_records(l) == before


@pytest.mark.parametrize("opts", WRITEBACK)
def test_times_set_here_and_by_the_kernel_keep_their_order(mount, lowers, opts):
    """Under the write cache the kernel stamps a written file's mtime and
    ctime itself (its coarse clock); the daemon stamps what it creates. A
    file written after another was created must never look older."""
    (l,) = lowers(1)
    m = mount([l], opts)
    fd = os.open(m / "written", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(200):
            os.mknod(m / f"fifo{i}", 0o644 | 0o010000)  # stamped by the daemon
            os.write(fd, b"x")                          # stamped by the kernel (write cache)
            os.fsync(fd)
            made = os.stat(m / f"fifo{i}").st_ctime_ns
            written = os.stat(m / "written")
            assert made <= written.st_mtime_ns and made <= written.st_ctime_ns, (i, made, written)
    finally:
        os.close(fd)

"""Fault cases (issue 5): the upper layer filling up (size=) in the middle of
writes and of a copy-up; lower files removed, truncated, grown or replaced
behind the daemon's back (an errno or consistent data, never a crash or a
hang); SIGTERM while busy; many mount/unmount cycles leaving nothing behind
on the machine."""

import errno
import os
import signal
import subprocess
import threading
import time

import pytest

import helpers as H

pytestmark = pytest.mark.memoverlay_only

MIB = 1 << 20


def _errno(fn, *a):
    try:
        return fn(*a), None
    except OSError as e:
        return None, e.errno


# --------------------------------------------------------------------------
# Upper layer full


@pytest.mark.parametrize("opts", ["size=1m", "size=1m,writeback"])
def test_upper_full_mid_write(opts, mount, lowers):
    """Writing 4 MiB into a 1 MiB upper: the failure is reported (ENOSPC from
    write, fsync or close — never silent loss), the bytes reported written
    read back, and after deleting the file the space is usable again."""
    (l,) = lowers(1)
    m = mount([l], opts)
    p = m / "big"
    chunk = os.urandom(64 * 1024)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    written, errs = 0, []
    try:
        for _ in range(64):
            try:
                n = os.write(fd, chunk)
                written += n
                if n < len(chunk):
                    break
            except OSError as e:
                errs.append(("write", e.errno))
                break
        try:
            os.fsync(fd)
        except OSError as e:
            errs.append(("fsync", e.errno))
    finally:
        try:
            os.close(fd)
        except OSError as e:
            errs.append(("close", e.errno))
    assert written < 4 * MIB and written <= 1 * MIB or errs, \
        f"{written} bytes accepted into a 1 MiB upper and no error reported"
    assert errs and all(e == errno.ENOSPC for _, e in errs), f"errors: {errs}"
    data = p.read_bytes()
    if "writeback" not in opts:
        # Without the write cache each write() reached the daemon: what it
        # accepted is there, in order.
        assert len(data) == written, (len(data), written)
        for off in range(0, written, len(chunk)):
            assert data[off:off + len(chunk)] == chunk[:written - off], f"data differs at {off}"
    else:
        # Cached writes failed at flush: whatever is there is a prefix of the data.
        for off in range(0, len(data), len(chunk)):
            seg = data[off:off + len(chunk)]
            assert seg in (chunk[:len(seg)], bytes(len(seg))), f"garbage at {off}"
    os.unlink(p)
    # the space comes back once the daemon has the RELEASE of the closed
    # file, which FUSE sends asynchronously
    assert H.wait_for(lambda: H.statfs_used(m.path) <= 256 * 1024, H.DEADLINE), \
        f"unlinked file's space not given back: {H.statfs_used(m.path)} bytes used"
    (m / "again").write_bytes(os.urandom(512 * 1024))
    assert len((m / "again").read_bytes()) == 512 * 1024


def test_upper_full_copy_up(mount, lowers):
    """Copy-up is lazy: one byte written into a 600 KiB lower file needs one
    block, so it fits into ~300 KiB free; rewriting the whole file does not:
    ENOSPC, every block reads old or new, and the daemon keeps serving."""
    (l,) = lowers(1)
    orig = os.urandom(600 * 1024)
    H.write(l / "lowerfile", orig)
    m = mount([l], "size=1m")
    (m / "filler").write_bytes(os.urandom(700 * 1024))

    def rewrite(data):
        # as cp or dd write: on after a short count (passthrough=upper's
        # tmpfs writes what fits first, as tmpfs does), until an error
        fd = os.open(m / "lowerfile", os.O_WRONLY)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
            os.fsync(fd)
        finally:
            os.close(fd)

    _, e = _errno(rewrite, b"x")
    assert e is None, f"1-byte write into a 600 KiB lower file: errno {e}"
    old = b"x" + orig[1:]
    assert (m / "lowerfile").read_bytes() == old
    new = os.urandom(600 * 1024)
    _, e = _errno(rewrite, new)
    assert e == errno.ENOSPC, f"rewrite of 600 KiB into ~300 KiB free: errno {e}"
    got = (m / "lowerfile").read_bytes()
    assert len(got) == len(orig)
    for k in range(0, len(got), 4096):
        assert got[k:k + 4096] in (old[k:k + 4096], new[k:k + 4096]), f"block at {k}"
    assert (l / "lowerfile").read_bytes() == orig, "the lower file changed"
    _, e = _errno(os.truncate, m / "lowerfile", 10)
    assert e is None
    used = H.statfs_used(m.path)
    os.unlink(m / "filler")
    # its 700 KiB come back once the daemon has the (asynchronous) RELEASE
    assert H.wait_for(lambda: H.statfs_used(m.path) <= used - 700 * 1024, H.DEADLINE), \
        f"unlinked filler's space not given back: {used} -> {H.statfs_used(m.path)} bytes used"
    with open(m / "lowerfile", "r+b") as f:
        f.write(b"Y")
    assert (m / "lowerfile").read_bytes() == b"Y" + got[1:10]


def test_nr_inodes_full_mid_create(mount, lowers):
    (l,) = lowers(1)
    m = mount([l], "nr_inodes=50")
    made, err = 0, None
    for i in range(200):
        try:
            (m / f"f{i}").write_bytes(b"x")
            made += 1
        except OSError as e:
            err = e.errno
            break
    assert err == errno.ENOSPC and 10 < made < 60, (made, err)
    for i in range(made):
        assert (m / f"f{i}").read_bytes() == b"x"
    free = os.statvfs(m.path).f_ffree
    os.unlink(m / "f0")
    assert H.wait_for(lambda: os.statvfs(m.path).f_ffree > free, H.DEADLINE), \
        f"unlink freed no inode: f_ffree {free} -> {os.statvfs(m.path).f_ffree}"
    (m / "one-more").write_bytes(b"y")


# --------------------------------------------------------------------------
# The lower layer changed behind the daemon's back


# The errnos each change behind the daemon's back may give (besides
# consistent data), by what happened to the object an operation touches:
EGONE = (errno.ENOENT,)        # its name was removed from the lower layer
ECHANGED = (errno.EIO,)        # its data was truncated or grown
# a regular file replaced by a directory: EISDIR, ENOTDIR for what only
# works on the one or the other, EIO from the FUSE kernel for an inode
# whose type changed
ETYPE = (errno.EISDIR, errno.ENOTDIR, errno.EIO)


def _read_or_errno(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError as e:
        return e.errno


def _consistent(got, errnos, *versions):
    """An errno in ERRNOS, or a version (or a prefix of one: a short read at
    a changed EOF)."""
    if isinstance(got, int):
        return got in errnos
    return any(v.startswith(got) for v in versions)


def _got(g):
    return errno.errorcode.get(g, g) if isinstance(g, int) else f"{len(g)} bytes"


def _answers(problems, what, fn, errnos):
    """FN succeeds or fails with an errno in ERRNOS; else a problem."""
    try:
        fn()
    except OSError as e:
        if e.errno not in errnos:
            problems.append(f"{what}: {errno.errorcode.get(e.errno, e.errno)}, expected "
                            f"success or {[errno.errorcode[x] for x in errnos]}")


@pytest.mark.parametrize("opts", ["", "nowriteback,entry_timeout=0,attr_timeout=0"])
def test_lower_changed_behind_back(opts, mount, lowers):
    (l,) = lowers(1)
    old = {n: os.urandom(100_000) for n in ("trunc", "gone", "grow", "cu", "todir", "open")}
    for n, d in old.items():
        H.write(l / n, d)
    H.write(l / "dir/a", "a")
    H.write(l / "dir/b", "b")
    m = mount([l], opts)
    m.snapshots = []   # the lower changes on purpose in this test
    for n in old:
        assert (m / n).read_bytes() == old[n]
    assert sorted(os.listdir(m / "dir")) == ["a", "b"]
    held = os.open(m / "open", os.O_RDONLY)

    new_trunc = old["trunc"][:10]
    with open(l / "trunc", "r+b") as f:
        f.truncate(10)
    os.unlink(l / "gone")
    with open(l / "grow", "ab") as f:
        f.write(b"more" * 1000)
    with open(l / "cu", "r+b") as f:
        f.truncate(50)
    os.unlink(l / "todir")
    os.mkdir(l / "todir")
    with open(l / "open", "r+b") as f:
        f.truncate(0)
    os.unlink(l / "dir/a")
    problems = []

    g = _read_or_errno(m / "trunc")
    if not _consistent(g, ECHANGED, old["trunc"], new_trunc):
        problems.append(f"trunc: read {_got(g)}, neither old nor new content")
    g = _read_or_errno(m / "gone")
    if not _consistent(g, EGONE, old["gone"]):
        problems.append(f"gone: read {_got(g)}, inconsistent")
    g = _read_or_errno(m / "grow")
    if not _consistent(g, ECHANGED, old["grow"] + b"more" * 1000):
        problems.append(f"grow: read {_got(g)}, inconsistent")
    g = _read_or_errno(m / "todir")
    if not (g in ETYPE if isinstance(g, int) else g == old["todir"]):
        problems.append(f"todir: read {_got(g)}, inconsistent")
    try:
        g = os.pread(held, 200_000, 0)
    except OSError as e:
        g = e.errno
    if not _consistent(g, ECHANGED, old["open"], b""):
        problems.append(f"open fd: read {_got(g)}, inconsistent")
    os.close(held)

    # copy-up of a file that shrank under the daemon
    def copy_up():
        with open(m / "cu", "r+b") as f:
            f.seek(0)
            f.write(b"W")
        g = (m / "cu").read_bytes()
        if not (g[:1] == b"W" and _consistent(g[1:], (), old["cu"][1:])):
            problems.append(f"cu: after copy-up {len(g)} bytes, inconsistent")
    _answers(problems, "cu: copy-up", copy_up, ECHANGED)
    # the directory: listing, stat and create still answer
    for what, fn, errnos in (
            ("listdir dir", lambda: os.listdir(m / "dir"), EGONE),
            ("lstat dir/a", lambda: os.lstat(m / "dir/a"), EGONE),
            ("create dir/c", lambda: (m / "dir/c").write_bytes(b"c"), EGONE),
            ("listdir todir", lambda: os.listdir(m / "todir"), ETYPE),
            ("unlink gone", lambda: os.unlink(m / "gone"), EGONE),
            ("rename trunc", lambda: os.rename(m / "trunc", m / "t2"), ECHANGED)):
        _answers(problems, what, fn, errnos)
    # now remove the whole directory behind its back, then use it
    os.unlink(l / "dir/b")
    os.rmdir(l / "dir")
    for what, fn, errnos in (
            ("listdir removed dir", lambda: os.listdir(m / "dir"), EGONE),
            ("create in removed dir", lambda: (m / "dir/d").write_bytes(b"d"), EGONE),
            ("rename removed dir", lambda: os.rename(m / "dir", m / "dir2"), EGONE),
            ("listdir root", lambda: os.listdir(m), ())):
        _answers(problems, what, fn, errnos)
    assert all(H.pid_alive(p) for p in m.pids), "daemon died"
    os.listdir(m)   # still serving
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------
# SIGTERM while busy


def test_sigterm_while_busy(mount, lowers, memoverlay_build):
    """SIGTERM with I/O in flight: the daemon unmounts and exits promptly;
    the busy processes get an error (ENOTCONN; EIO for a request in flight
    when the connection goes) or finish, never hang; no sanitizer report,
    no leak (checked by the fixture)."""
    (l,) = lowers(1)
    for i in range(20):
        H.write(l / f"f{i}", os.urandom(50_000))
    m = mount([l])
    stop = threading.Event()
    outcome = []
    rounds = [0] * 4

    def busy(k):
        i = 0
        try:
            while not stop.is_set():
                p = m / f"f{(i + k) % 20}"
                with open(p, "r+b") as f:
                    f.write(os.urandom(4096))
                    f.read()
                (m / f"new{k}-{i % 50}").write_bytes(b"x" * 10000)
                os.listdir(m)
                i += 1
                rounds[k] = i
            outcome.append(("stopped", k))
        except OSError as e:
            outcome.append((errno.errorcode.get(e.errno, e.errno), k))

    ts = [threading.Thread(target=busy, args=(k,), daemon=True) for k in range(4)]
    for t in ts:
        t.start()
    # SIGTERM only once every thread is in its loop (each has done a round
    # of writes, creates and listings), so I/O is in flight when it comes
    assert H.wait_for(lambda: min(rounds) >= 2 or outcome, H.DEADLINE), \
        f"the busy threads made no progress: rounds {rounds}"
    assert not outcome, f"a busy thread ended before the SIGTERM: {outcome}"
    pids = list(m.pids)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    alive = H.wait_pids_gone(pids, H.DEADLINE)
    stop.set()
    for t in ts:
        t.join(H.DEADLINE)
    hung = [t for t in ts if t.is_alive()]
    if hung or alive:
        H.unmount(m.path)   # let stuck threads go
    assert not alive, f"daemon {alive} still running {H.DEADLINE:.0f} s after SIGTERM"
    assert not hung, f"{len(hung)} busy threads hung after SIGTERM"
    assert not H.is_mounted(m.path), "SIGTERM left the mount behind (daemon gone)"
    # (with FUSE over io_uring, a request on a ring as it goes: ECANCELED)
    assert {o for o, _ in outcome} <= {"stopped", "ENOTCONN", "ENOENT", "ECONNABORTED", "EIO",
                                       "ECANCELED"}, outcome


# --------------------------------------------------------------------------
# Many mount/unmount cycles


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _cycles(*args):
    try:
        _cycles_on(*args)
    except Exception as e:  # noqa: BLE001 -- reported, not lost with the thread
        args[5].append(f"{args[2]}: {e!r}")


def _cycles_on(exe, lower, mp, n, san_dir, errors, held, progress):
    """N mount cycles on MP. HELD collects the identity of every memfd a
    daemon held while mounted; PROGRESS[mp] counts finished cycles."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = f"log_path={san_dir}/asan:detect_leaks=1"
    env["UBSAN_OPTIONS"] = f"log_path={san_dir}/ubsan:print_stacktrace=1:halt_on_error=1"
    data = os.urandom(1024 * 1024)
    for i in range(n):
        r = subprocess.run([*exe, mp, "-o", f"lowerdir={lower}"], env=env,
                           capture_output=True, timeout=H.DEADLINE)
        if r.returncode != 0:
            errors.append(f"{mp} cycle {i}: mount failed: {r.stderr!r}")
            return
        pids = H.daemon_pids(mp, resolve=False)
        try:
            with open(os.path.join(mp, "f"), "wb") as f:
                f.write(data)
            if os.listdir(mp) != ["f"] and sorted(os.listdir(mp)) != ["f", "lf"]:
                errors.append(f"{mp} cycle {i}: listing {os.listdir(mp)}")
            mine = {}
            for pid in pids:
                try:
                    mine.update(H.memfds(pid))
                except OSError as e:
                    errors.append(f"{mp} cycle {i}: fds of daemon {pid}: {e!r}")
            # the upper layer lives in a memfd (medium=memory, the default):
            # without one found, the check after the cycles would prove nothing
            if not mine:
                errors.append(f"{mp} cycle {i}: no memfd held by the daemon(s) {pids}")
            held.update(mine)
        finally:
            notes = H.unmount(mp)
        if notes:
            errors.append(f"{mp} cycle {i}: unmount: {notes}")
        alive = H.wait_pids_gone(pids, H.DEADLINE)
        if alive:
            errors.append(f"{mp} cycle {i}: daemon {alive} still running after unmount")
            return
        progress[mp] += 1


def test_mount_unmount_cycles(memoverlay_build, tmp_path, lowers):
    """1000 cycles (plain build; 100 under ASan), two mountpoints at a time:
    each cycle a new daemon that writes 1 MiB into its upper (a memfd).
    Afterwards nothing is left: no mount, no daemon process, no fd in this
    process, and no process on the machine holds (open or mapped) any of the
    memfds the daemons held while mounted."""
    total = 100 if memoverlay_build.sanitized else 1000
    (l,) = lowers(1)
    H.write(l / "lf", "lower")
    san = tmp_path / "san"
    san.mkdir()
    mps = [str(tmp_path / f"mnt{k}") for k in range(2)]
    for mp in mps:
        os.mkdir(mp)
    fds0 = _fds()
    errors, held = [], {}
    progress = {mp: 0 for mp in mps}
    ts = [threading.Thread(target=_cycles, daemon=True,
                           args=(memoverlay_build.cmd, str(l), mp, total // 2, san,
                                 errors, held, progress)) for mp in mps]
    # Hang guard, not a speed limit: a cycle bounds each of its steps (start,
    # unmount, daemon exit: 5 * H.DEADLINE at worst, all failures) except the
    # file I/O on the mount, so a cycle that does not finish within STALL
    # seconds is stuck. Its daemons are killed (which aborts the connection
    # and frees the thread), and the test fails.
    STALL = 6 * H.DEADLINE
    stuck = []
    try:
        for t in ts:
            t.start()
        last, since = None, time.monotonic()
        while any(t.is_alive() for t in ts):
            for t in ts:
                t.join(1)
            now = dict(progress)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > STALL:
                stuck = [mp for mp, t in zip(mps, ts) if t.is_alive()]
                for mp in stuck:
                    H.kill_and_reap(H.daemon_pids(mp, resolve=False))
                for t in ts:
                    t.join(H.DEADLINE)
                break
    finally:
        for mp in mps:
            H.unmount(mp)
    assert not stuck, f"mount cycles hung on {stuck}: no cycle finished in {STALL:.0f}s " \
                      f"(cycles done: {progress})"
    assert not any(t.is_alive() for t in ts), "mount cycle threads still running"
    assert not errors, "\n".join(errors[:20])
    assert progress == {mp: total // 2 for mp in mps}, progress
    left = [m for mp in mps for m in H.mounts_at(mp)]
    assert not left, f"mounts left: {left}"
    procs = [p for mp in mps for p in H.daemon_pids(mp, resolve=False)]
    assert not procs, f"daemons left: {procs}"
    assert _fds() <= fds0, f"fds of the test process grew: {fds0} -> {_fds()}"
    # every daemon had its own memfd
    assert len(held) >= total, f"{len(held)} distinct memfds seen in {total} cycles"
    holders = H.memfd_holders(held)
    assert not holders, f"memfds of ended daemons still held: {holders[:20]}"
    logs = {f: (san / f).read_text(errors="replace")[:4000] for f in os.listdir(san)}
    assert not logs, f"sanitizer reports: {logs}"

"""Hardening, checked from outside the daemon and by attacking it:

- /proc/PID/status: as root only CAP_DAC_READ_SEARCH and CAP_SYS_ADMIN are
  left (effective, permitted, bounding), no ambient or inheritable caps,
  NoNewPrivs 1; as a plain user no capabilities; RLIMIT_NOFILE soft == hard;
- a lower directory swapped for a symlink (to a directory outside, or to /)
  while mounted: nothing the daemon resolves itself -- lookups under a
  directory looked up before the swap, readdir of it, getxattr, open for
  read and for write (copy-up) -- ever returns data or names from outside
  the layer, and nothing outside is written;
- `..`-looking names stay names; over-long names give ENAMETOOLONG; paths
  of 4096 bytes below a layer root work;
- a 200,000-file lower walked with `find -type f -exec cat {} +` under
  RLIMIT_NOFILE 1024: the daemon's fd count stays small;
- SIGTERM/SIGINT while busy unmount cleanly; SIGKILL gives ENOTCONN
  (no hang) and `fusermount3 -u` / `umount` clean up."""

import errno
import os
import signal
import subprocess
import threading
import time

import pytest

import helpers as H
from helpers import write, mkdir

pytestmark = pytest.mark.memoverlay_only

KEEP = {"DAC_READ_SEARCH", "SYS_ADMIN"}


def main_pid(m):
    pids = H.main_daemon_pids(m.pids) or m.pids
    assert len(pids) == 1, f"daemon pids {m.pids}"
    return pids[0]


def settled_status(pid, timeout=H.DEADLINE):
    """/proc/PID/status once the daemon has set no_new_privs (the starter
    exits only after the daemon has dropped its privileges, so this is a
    safety net, not a wait that matters)."""
    st = {}

    def ready():
        st.clear()
        st.update(H.proc_status(pid))
        return st.get("NoNewPrivs") == "1"
    H.wait_for(ready, timeout)
    return st


def check_common(st, pid):
    assert st["NoNewPrivs"] == "1", f"NoNewPrivs {st['NoNewPrivs']}"
    assert H.cap_names(st["CapAmb"]) == set(), f"CapAmb {st['CapAmb']}"
    assert H.cap_names(st["CapInh"]) == set(), f"CapInh {st['CapInh']}"
    soft, hard = H.nofile_limits(pid)
    assert soft == hard, f"RLIMIT_NOFILE soft {soft} != hard {hard}"


def test_capabilities_as_root(mount, lowers):
    (l,) = lowers(1)
    write(l / "f", "x")
    m = mount([l])
    pid = main_pid(m)
    st = settled_status(pid)
    for k in ("CapEff", "CapPrm", "CapBnd"):
        assert H.cap_names(st[k]) == KEEP, f"{k}: {sorted(H.cap_names(st[k]))}"
    check_common(st, pid)
    assert (m / "f").read_text() == "x"
    (m / "g").write_text("still serving")
    assert (m / "g").read_text() == "still serving"


def test_capabilities_under_low_nofile(mount, lowers):
    """Started with soft 512 / hard 4096 (a rootless container's limits): the
    daemon raises soft to hard."""
    (l,) = lowers(1)
    write(l / "f", "x")
    mp = mount._new_dir("mnt")
    m = mount([l], mountpoint=mp, argv=["prlimit", "--nofile=512:4096", *mount.build.cmd,
                                        "-o", f"lowerdir={l}", str(mp)])
    pid = main_pid(m)
    assert H.nofile_limits(pid) == (4096, 4096)


def test_capabilities_as_plain_user(memoverlay_build):
    uid, gid, _ = H.ensure_test_user()
    with H.shared_tmpdir("mo-hard.", owner=(uid, gid)) as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x")
        mnt = mkdir(d / "mnt")
        for p in (lower, lower / "f", mnt):
            os.chown(p, uid, gid)
        r = subprocess.run(H.as_user(uid, gid) + [*memoverlay_build.cmd, "-o",
                                                  f"lowerdir={lower}", str(mnt)],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids = H.processes_mentioning(d)
        main = H.wait_for(lambda: len(H.main_daemon_pids(pids)) == 1 and
                          H.main_daemon_pids(pids), H.DEADLINE)
        assert main, f"{pids} {[H.proc_comm(p) for p in pids]}"
        st = settled_status(main[0])
        for k in ("CapEff", "CapPrm"):
            assert H.cap_names(st[k]) == set(), f"{k}: {sorted(H.cap_names(st[k]))}"
        # (CapBnd cannot be cleared without CAP_SETPCAP; no_new_privs makes it moot)
        check_common(st, main[0])
        subprocess.run(H.as_user(uid, gid) + ["fusermount3", "-u", str(mnt)], timeout=30,
                       check=True, capture_output=True)
        assert not H.wait_pids_gone(pids, H.DEADLINE)
    assert not left, left


@pytest.mark.parametrize("end", ["umount", "SIGTERM", "SIGKILL"])
def test_capabilities_as_root_of_a_user_namespace(memoverlay_build, end):
    """Root of `unshare -Urm` (as root), the rootless-container case: the
    daemon keeps only CAP_DAC_READ_SEARCH (effective, permitted, bounding)
    and sets no_new_privs; CAP_SYS_ADMIN is gone, so its unmount helper
    unmounts when the daemon ends, however it ends."""
    with H.shared_tmpdir("mo-hard.") as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x")
        mnt = mkdir(d / "mnt")
        stop = {"umount": f"umount {mnt}",
                "SIGTERM": "kill -TERM $daemon",
                "SIGKILL": "kill -KILL $daemon"}[end]
        # The daemon: not its unmount helper, which the starter may exit
        # before it has renamed itself (a forked child of the daemon, so its
        # parent's argv names the mountpoint too).
        script = (f"{memoverlay_build.shell_cmd} -o lowerdir={lower} {mnt}\n"
                  f"for p in $(pgrep -x memoverlay); do grep -q {mnt} /proc/$p/cmdline || continue\n"
                  f"  pp=$(awk '/^PPid:/ {{print $2}}' /proc/$p/status)\n"
                  f"  if grep -q {mnt} /proc/$pp/cmdline 2>/dev/null; then continue; fi\n"
                  f"  daemon=$p; grep -E '^(Cap|NoNewPrivs)' /proc/$p/status; done\n"
                  f"cat {mnt}/f; echo\n"
                  f"{stop}\n"
                  # the helper's unmount is seen in this namespace's mount table
                  f"i=0; while grep -q ' {mnt} ' /proc/self/mountinfo; do\n"
                  f"  i=$((i+1)); [ $i -lt 600 ] || {{ echo 'still mounted' >&2; exit 1; }}\n"
                  f"  sleep 0.1; done\n"
                  f"echo unmounted\n")
        r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        st = dict(l.split(":\t") for l in r.stdout.splitlines() if ":\t" in l)
        for k in ("CapEff", "CapPrm", "CapBnd"):
            assert H.cap_names(st[k]) == {"DAC_READ_SEARCH"}, st
        assert H.cap_names(st["CapAmb"]) == set(), st
        assert st["NoNewPrivs"] == "1", st
        assert r.stdout.splitlines()[-2:] == ["x", "unmounted"], r.stdout
        assert not H.wait_pids_gone(H.processes_mentioning(d), H.DEADLINE)
    assert not left, left


# --------------------------------------------------------------------------
# A lower directory swapped for a symlink while mounted

SECRET = b"SECRET-outside-the-layer-7f3a"


def _no_secret(data, what):
    assert SECRET not in data, f"{what}: the daemon returned data from outside the layer"


@pytest.mark.parametrize("target", ["outside-abs", "outside-rel", "root"])
def test_lower_dir_swapped_for_symlink(mount, lowers, tmp_path, target):
    (l,) = lowers(1)
    outside = mkdir(tmp_path / "outside")
    # the outside dir mirrors the lower's names, with secret contents
    for name in ("f", "sub/g", "x", "only-outside"):
        write(outside / name, SECRET)
    os.setxattr(outside / "x", "user.k", SECRET)
    write(l / "d/f", "inner f\n")
    write(l / "d/sub/g", "inner g\n")
    write(l / "d/x", "inner x\n")
    os.setxattr(l / "d/x", "user.k", b"inner")
    write(l / "d/w", "inner w\n")
    m = mount([l])
    m.snapshots = []        # this test changes the lower itself; checked below instead
    d_before = H.tree_records(l / "d")
    out_before = H.tree_records(outside)

    # look everything up (and keep the directory open) before the swap
    dfd = os.open(m / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in ("f", "sub/g", "x", "w"):
            os.stat(n, dir_fd=dfd)
        assert sorted(os.listdir(dfd)) == ["f", "sub", "w", "x"]

        os.rename(l / "d", l / "d.real")
        link = {"outside-abs": str(outside),
                "outside-rel": os.path.relpath(outside, l),
                "root": "/"}[target]
        os.symlink(link, l / "d")
        try:
            results = {}
            # names the daemon resolves itself under the already looked-up d
            for n in ("f", "sub/g", "x", "only-outside", "etc/passwd", "w"):
                try:
                    fd = os.open(n, os.O_RDONLY, dir_fd=dfd)
                    try:
                        data = os.read(fd, 1 << 16)
                    finally:
                        os.close(fd)
                    _no_secret(data, f"read d/{n}")
                    if n == "etc/passwd":
                        assert b"root:" not in data, "read /etc/passwd through the layer"
                    results[n] = data
                except OSError as e:
                    results[n] = errno.errorcode.get(e.errno, e.errno)
            # readdir of the swapped directory
            try:
                names = os.listdir(dfd)
                assert "only-outside" not in names and "etc" not in names \
                    and "proc" not in names, f"readdir showed names from outside: {names}"
            except OSError as e:
                results["readdir"] = errno.errorcode.get(e.errno, e.errno)
            # getxattr of an already looked-up file
            try:
                v = os.getxattr(f"/proc/self/fd/{dfd}/x", "user.k")
                _no_secret(v, "getxattr d/x")
            except OSError as e:
                results["getxattr"] = errno.errorcode.get(e.errno, e.errno)
            # open for writing: copy-up of an already looked-up file
            try:
                fd = os.open("w", os.O_RDWR | os.O_APPEND, dir_fd=dfd)
                try:
                    os.write(fd, b"appended\n")
                    os.lseek(fd, 0, os.SEEK_SET)
                    data = os.read(fd, 1 << 16)
                finally:
                    os.close(fd)
                _no_secret(data, "copy-up of d/w")
                results["copyup"] = data
            except OSError as e:
                results["copyup"] = errno.errorcode.get(e.errno, e.errno)
            try:
                fd = os.open("sub/g", os.O_WRONLY | os.O_APPEND, dir_fd=dfd)
                os.write(fd, b"more\n")
                os.close(fd)
                fd = os.open("sub/g", os.O_RDONLY, dir_fd=dfd)
                _no_secret(os.read(fd, 1 << 16), "copy-up of d/sub/g")
                os.close(fd)
            except OSError:
                pass
            # the daemon keeps serving
            os.listdir(m)
        finally:
            os.unlink(l / "d")
            os.rename(l / "d.real", l / "d")
    finally:
        os.close(dfd)
    assert H.tree_records(outside) == out_before, "the daemon changed files outside the layer"
    after = H.tree_records(l / "d")
    assert [r for r in after if r["path"] != "."] == [r for r in d_before if r["path"] != "."], \
        "lower changed:\n" + "\n".join(H.tree_diff(d_before, after))


def test_names_that_look_like_paths(mount, lowers, tmp_path):
    (l,) = lowers(1)
    write(tmp_path / "lower" / "escaped", SECRET)       # a sibling of the layer
    names = ["...", "..a", "a..", ". .", "..\\", "\\..", "..%2f..", ".. ", " ..", "-", "~"]
    for n in names:
        write(l / "dir" / n, f"lower {n}")
    m = mount([l])
    for n in names:
        assert (m / "dir" / n).read_text() == f"lower {n}"
        (m / "dir" / n).write_text(f"upper {n}")
        assert (m / "dir" / n).read_text() == f"upper {n}"
        (m / "new" / n).parent.mkdir(exist_ok=True)
        (m / "new" / n).write_text(n)
    assert sorted(os.listdir(m / "dir")) == sorted(names)
    assert sorted(os.listdir(m / "new")) == sorted(names)
    # `..` is resolved by the kernel, never by the daemon: it cannot leave the mount
    assert os.path.samestat(os.stat(m / "dir" / ".." / ".."), os.stat(m.path.parent))
    assert H.errno_of(os.stat, m / "escaped") == errno.ENOENT
    for n in ("a\0b",):
        with pytest.raises(ValueError):
            os.stat(m / n)


def test_over_long_names(mount, lowers):
    (l,) = lowers(1)
    n255 = "n" * 255
    write(l / n255, "long")
    m = mount([l])
    assert (m / n255).read_text() == "long"
    (m / n255).write_text("copied up")
    assert (m / n255).read_text() == "copied up"
    for op in (lambda p: open(p, "w"), os.mkdir, os.stat, lambda p: os.symlink("x", p),
               lambda p: os.rename(m / n255, p), lambda p: os.getxattr(p, "user.k")):
        assert H.errno_of(op, m / ("n" * 256)) == errno.ENAMETOOLONG
    # a symlink target of 4095 bytes is fine, 4096 is not
    os.symlink("t" * 4095, m / "longlink")
    assert os.readlink(m / "longlink") == "t" * 4095
    assert H.errno_of(os.symlink, "t" * 4096, m / "toolong") == errno.ENAMETOOLONG
    os.listdir(m)


def _deep_chain(root, total):
    """Directories of 250-byte names below ROOT until the path relative to
    ROOT reaches about TOTAL bytes; returns the list of components."""
    comps = []
    while sum(len(c) + 1 for c in comps) + 251 < total:
        comps.append(f"{len(comps):03d}" + "d" * 247)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in comps:
            os.mkdir(c, dir_fd=fd)
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        tail = "f" * max(1, min(255, total - sum(len(c) + 1 for c in comps)))
        wfd = os.open(tail, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"deep")
        os.close(wfd)
    finally:
        os.close(fd)
    return comps, tail


def _walk_fd(top, comps):
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, c in enumerate(comps):
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        depth = sum(len(x) + 1 for x in comps[:i + 1])
        raise AssertionError(f"through the mount, component {i} (path of {depth} bytes below "
                             f"the layer root): {e!r}") from None
    return fd


@pytest.mark.parametrize("total", [4000, 4096, 6000])
def test_deep_paths_below_a_layer_root(mount, lowers, total):
    """Paths of 4000, 4096 and 6000 bytes below the layer root (walked one
    directory at a time through the mount, as `find` or `rm -r` do):
    read, copy-up, create and readdir work at the bottom."""
    (l,) = lowers(1)
    comps, tail = _deep_chain(l, total)
    before = fd_tree(l)
    mp = mount._new_dir("mnt")
    # the fixture's lower snapshot walks by full path (too long here): own check
    m = mount([], mountpoint=mp, argv=[*mount.build.cmd, "-o", f"lowerdir={l}", str(mp)])
    fd = _walk_fd(m, comps)
    try:
        assert os.listdir(fd) == [tail]
        rfd = os.open(tail, os.O_RDONLY, dir_fd=fd)
        assert os.read(rfd, 100) == b"deep"
        os.close(rfd)
        wfd = os.open(tail, os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        os.write(wfd, b"+up")
        os.close(wfd)
        rfd = os.open(tail, os.O_RDONLY, dir_fd=fd)
        assert os.read(rfd, 100) == b"deep+up"
        os.close(rfd)
        nfd = os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.close(nfd)
        assert sorted(os.listdir(fd)) == sorted([tail, "new"])
    finally:
        os.close(fd)
    mount.unmount(m)
    assert fd_tree(l) == before, "lower changed"


def fd_tree(root):
    """(relpath, mode, uid, gid, size, mtime_ns, content) of every entry below
    ROOT, walked with directory fds (no PATH_MAX limit)."""
    out = []
    for dirpath, dirs, files, dfd in os.fwalk(root):
        for n in sorted(dirs + files):
            st = os.stat(n, dir_fd=dfd, follow_symlinks=False)
            data = None
            if n in files:
                try:
                    f = os.open(n, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                    data = os.read(f, 1 << 20)
                    os.close(f)
                except OSError:
                    pass
            out.append((os.path.relpath(os.path.join(dirpath, n), root), st.st_mode,
                        st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, data))
    return sorted(out)


# --------------------------------------------------------------------------
# Bounded file descriptors


def test_200k_files_find_cat_bounded_fds(mount, lowers, memoverlay_build):
    if memoverlay_build.sanitized:
        pytest.skip("200k files: plain build only (slow under ASan)")
    (l,) = lowers(1)
    n = 200_000
    per = 1000
    for i in range(n // per):
        d = l / f"d{i:03d}"
        d.mkdir()
        for j in range(per):
            (d / f"f{j:04d}").write_bytes(b"%d\n" % (i * per + j))
    mp = mount._new_dir("mnt")
    m = mount([l], mountpoint=mp, watchdog=900,
              argv=["prlimit", "--nofile=1024:1024", *mount.build.cmd, "-o",
                    f"lowerdir={l}", str(mp)])
    pid = main_pid(m)
    peak = [H.fd_count(pid)]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], H.fd_count(pid))
            except OSError:
                return
            # sampling pace: a peak between samples is missed (the check
            # gets weaker under load), it can never make the test fail
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        r = subprocess.run(f"find {mp} -type f -exec cat {{}} + | wc -l", shell=True,
                           capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    assert int(r.stdout) == n
    assert peak[0] < 100, f"daemon fd count peaked at {peak[0]}"
    assert H.fd_count(pid) < 100


# --------------------------------------------------------------------------
# Signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_busy_unmounts_cleanly(mount, lowers, sig, tmp_path):
    (l,) = lowers(1)
    for i in range(50):
        write(l / f"f{i}", os.urandom(64 << 10))
    m = mount([l])
    pid = main_pid(m)
    rounds = tmp_path / "rounds"   # one byte per round of the loop, off the mount
    rounds.touch()
    busy = subprocess.Popen(
        ["/bin/sh", "-c", f"cd {m}; while :; do cat f* >/dev/null; "
                          f"dd if=/dev/zero of=big bs=64k count=64 2>/dev/null; "
                          f"ls -l >/dev/null; printf . >>{rounds}; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # the signal comes once the loop has gone round twice and is still
        # going: I/O is in flight
        assert H.wait_for(lambda: busy.poll() is not None or rounds.stat().st_size >= 2,
                          H.DEADLINE), "the busy loop made no progress"
        assert busy.poll() is None, "the busy loop ended early"
        os.kill(pid, sig)
        assert H.wait_for(lambda: not H.is_mounted(m), H.DEADLINE), \
            f"{signal.Signals(sig).name}: still mounted after {H.DEADLINE:.0f}s"
        assert not H.wait_pids_gone([pid], H.DEADLINE), "daemon still running"
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        try:
            busy.wait(timeout=H.DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail("the busy workload hung after the daemon ended")


@pytest.mark.parametrize("cleanup", [["fusermount3", "-u"], ["umount"]],
                         ids=["fusermount3", "umount"])
def test_sigkill_gives_enotconn_and_cleans_up(mount, lowers, cleanup):
    (l,) = lowers(1)
    write(l / "f", "x")
    m = mount([l])
    (m / "g").write_text("upper")
    pid = main_pid(m)
    os.kill(pid, signal.SIGKILL)
    assert not H.wait_pids_gone([pid], H.DEADLINE)
    # with the daemon gone the connection is aborted: an access fails with
    # ENOTCONN instead of waiting for an answer ('hang' after H.DEADLINE s).
    # With FUSE over io_uring the kernel frees the daemon's rings a moment
    # after it ends; a request it put on a ring meanwhile ends with
    # ECONNABORTED when the ring goes.
    e = H.stat_errno_bounded(m)
    assert e in (errno.ENOTCONN, errno.ECONNABORTED), \
        f"access after SIGKILL: {e!r} (want ENOTCONN)"
    r = subprocess.run(cleanup + [str(m)], capture_output=True, text=True, timeout=H.DEADLINE)
    assert r.returncode == 0, r.stderr
    assert not H.is_mounted(m)
    # nothing else of the daemon's stays behind
    assert not H.wait_pids_gone(H.processes_mentioning(m.path.parent), H.DEADLINE)

"""The system call allowlist (fs/seccomp.c), checked from outside:

- /proc/PID/status shows Seccomp 2 (one filter) once the daemon serves, and
  0 with -o seccomp=off; a bad value is refused;
- a call the daemon never makes, injected into the running daemon with gdb
  (execve, mount, ptrace), stops it: the line on stderr names the call, the
  daemon dies of SIGSYS, and the mount is dead (ENOTCONN) or gone; a fork
  fails with EPERM and clone3 with ENOSYS, and the daemon goes on;
- ordinary work under the filter (cp -a, tar, git, find, Python file
  operations, big reads and writes, one and several worker threads) works,
  and the daemon ends cleanly on unmount and on SIGTERM (exit status 0,
  nothing about seccomp on stderr);
- the filter is on for a plain user's daemon and as root of a user
  namespace (`unshare -Urm`) too."""

import contextlib
import errno
import mmap
import os
import shutil
import signal
import subprocess

import pytest

import helpers as H
from helpers import write, mkdir

pytestmark = pytest.mark.memoverlay_only

START = 30      # seconds for a daemon to come up, or to end once told to


def main_pid(m):
    pids = H.main_daemon_pids(m.pids) or m.pids
    assert len(pids) == 1, f"daemon pids {m.pids}"
    return pids[0]


def seccomp_status(pid):
    st = H.proc_status(pid)
    return st.get("Seccomp"), st.get("Seccomp_filters")


def filtered(pid):
    """What seccomp_status says of a filtered daemon: one filter, or two
    where FUSE over io_uring runs (the second takes away what starting the
    rings needed, fs/seccomp.c)."""
    return ("2", "2" if H.ring_fds(pid) else "1")


@contextlib.contextmanager
def foreground(mount, layers, opts=""):
    """The daemon run with -f (its stderr kept) by hand; yields (Popen,
    stderr path, mountpoint) once it serves. Whatever happens, the daemon is
    killed if still running and the mountpoint unmounted afterwards."""
    mp = mount._new_dir("mnt")
    san = mount._new_dir("san")
    errpath = mount.tmp / f"fg{mount.n}.err"
    mount.extra_mps.append(str(mp))     # the fixture's safety net, too
    argv = mount.argv(layers, opts, mp) + ["-f"]
    with open(errpath, "wb") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, env=mount.env(san), start_new_session=True)
    try:
        want = "0" if "seccomp=off" in opts else "2"
        up = H.wait_for(lambda: p.poll() is not None or
                        (H.is_mounted(mp) and seccomp_status(p.pid)[0] == want), START)
        assert up and p.poll() is None, \
            f"daemon not up (exit {p.poll()}): {errpath.read_text(errors='replace')}"
        yield p, errpath, mp
        sanlogs = sorted(os.listdir(san))
        assert not sanlogs, f"sanitizer logs: {[(san / f).read_text()[:4000] for f in sanlogs]}"
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=START)
        H.unmount(mp)
        if H.is_mounted(mp):
            subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=START)


def test_status_shows_the_filter(mount, lowers):
    (l,) = lowers(1)
    write(l / "f", "x")
    m = mount([l])
    # the starter exits only once the daemon is set up: filter included
    pid = main_pid(m)
    assert seccomp_status(pid) == filtered(pid)
    assert (m / "f").read_text() == "x"


def test_seccomp_off(mount, lowers):
    (l,) = lowers(1)
    write(l / "f", "x")
    m = mount([l], "seccomp=off")
    assert seccomp_status(main_pid(m)) == ("0", "0")
    assert (m / "f").read_text() == "x"
    m2 = mount([l], "seccomp=on")
    pid2 = main_pid(m2)
    assert seccomp_status(pid2) == filtered(pid2)


def test_bad_seccomp_value(mount, lowers, mnt):
    (l,) = lowers(1)
    r = mount.run([mnt, "-o", f"lowerdir={l},seccomp=maybe"])
    assert r.returncode == 1
    assert r.stderr == "memoverlay: bad seccomp (want on or off): 'maybe'\n"
    assert not H.is_mounted(mnt)


# --------------------------------------------------------------------------
# A forbidden call, made from inside the running daemon

# (name, number on x86_64, arguments): each refused before it looks at them
FORBIDDEN = {
    "execve": (59, "0, 0, 0"),
    "mount": (165, "0, 0, 0, 0, 0"),
    # PTRACE_TRACEME: the sanitized build allows ptrace only for
    # LeakSanitizer's requests (attach, detach, ...), so this one is refused
    # there as well
    "ptrace": (101, "0, 0, 0, 0"),
}


@pytest.mark.parametrize("call", sorted(FORBIDDEN))
def test_forbidden_call_stops_the_daemon(mount, lowers, call):
    if not shutil.which("gdb"):
        pytest.skip("gdb not installed")
    if os.uname().machine != "x86_64":
        pytest.skip("system call numbers of x86_64")
    nr, args = FORBIDDEN[call]
    (l,) = lowers(1)
    write(l / "f", "x")
    with foreground(mount, [l]) as (p, errpath, mp):
        assert (mp / "f").read_text() == "x"
        g = subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-nx",
                            "-ex", "handle SIGSYS nostop noprint pass",
                            "-ex", f"call (long)syscall({nr}, {args})"],
                           capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        try:
            p.wait(timeout=START)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon survived {call}: gdb said {g.stdout}{g.stderr}")
        err = errpath.read_text(errors="replace")
        assert f"memoverlay: seccomp: system call {call} ({nr}) is not allowed; stopping\n" \
            in err, f"stderr: {err!r}; gdb: {g.stdout}{g.stderr}"
        assert p.returncode == -signal.SIGSYS, f"exit {p.returncode}; stderr {err!r}"
        # a dead mount (root unmounts itself only on a clean end), or none
        e = H.stat_errno_bounded(mp, timeout=10)
        assert e in (errno.ENOTCONN, errno.ECONNABORTED) or not H.is_mounted(mp), f"after the kill: {e!r}"


def test_fork_fails_and_the_daemon_goes_on(mount, lowers):
    """The two refusals that do not stop the daemon: a fork (clone without
    CLONE_THREAD) fails with EPERM, clone3 with ENOSYS (glibc then uses
    clone for threads)."""
    if not shutil.which("gdb"):
        pytest.skip("gdb not installed")
    if os.uname().machine != "x86_64":
        pytest.skip("system call numbers of x86_64")
    (l,) = lowers(1)
    write(l / "f", "x")
    with foreground(mount, [l]) as (p, errpath, mp):
        errno_now = "print *(int *)__errno_location()"
        g = subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-nx",
                            "-ex", "handle SIGSYS nostop noprint pass",
                            "-ex", f"print (long)syscall(56, {signal.SIGCHLD}, 0, 0, 0, 0)",
                            "-ex", errno_now,
                            "-ex", "print (long)syscall(435, 0, 0)",
                            "-ex", errno_now],
                           capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        values = [line.split(" = ", 1)[1] for line in g.stdout.splitlines()
                  if line.startswith("$") and " = " in line]
        assert values == ["-1", str(errno.EPERM), "-1", str(errno.ENOSYS)], g.stdout + g.stderr
        assert p.poll() is None, "the daemon stopped"
        assert (mp / "f").read_text() == "x"
        subprocess.run(["fusermount3", "-u", str(mp)], check=True, capture_output=True,
                       timeout=START)
        p.wait(timeout=START)
        err = errpath.read_text(errors="replace")
        assert p.returncode == 0 and "seccomp" not in err, f"exit {p.returncode}: {err}"


# --------------------------------------------------------------------------
# Ordinary work under the filter


def build_tree(root):
    for i in range(30):
        write(root / f"src/d{i % 5}/f{i}.txt", f"file {i}\n" * (i + 1))
    write(root / "src/big.bin", os.urandom(3 << 20))
    H.symlink(root / "src/link", "d0/f0.txt")
    os.link(root / "src/d1/f1.txt", root / "src/hard")
    os.setxattr(root / "src/d2/f2.txt", "user.k", b"v")
    mkdir(root / "src/empty")


def python_file_ops(top):
    w = top / "py"
    w.mkdir()
    (w / "a").write_bytes(b"a" * 10000)
    os.rename(w / "a", w / "b")
    os.truncate(w / "b", 5000)
    os.symlink("b", w / "s")
    os.link(w / "b", w / "h")
    os.setxattr(w / "b", "user.x", b"1")
    assert os.getxattr(w / "b", "user.x") == b"1"
    assert "user.x" in os.listxattr(w / "b")
    os.removexattr(w / "b", "user.x")
    os.chmod(w / "b", 0o600)
    os.utime(w / "b", (1, 2))
    fd = os.open(w / "m", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 1 << 16)
        H.fallocate(fd, 0, 0, 1 << 16)
        with mmap.mmap(fd, 1 << 16) as mm:
            mm[:5] = b"hello"
            mm.flush()
        assert os.pread(fd, 5, 0) == b"hello"
        os.fsync(fd)
        src = os.open(top / "src/big.bin", os.O_RDONLY)
        try:
            assert os.copy_file_range(src, fd, 1 << 20, 0, 0) > 0
            os.lseek(fd, 0, os.SEEK_DATA)
        finally:
            os.close(src)
    finally:
        os.close(fd)
    os.statvfs(w)
    os.unlink(w / "h")
    os.unlink(w / "s")
    os.mkdir(w / "sub")
    os.rmdir(w / "sub")
    # a lazy copy-up: a small write into a big lower file
    with open(top / "src/big.bin", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"middle")
    assert sorted(os.listdir(w)) == ["b", "m"]


def run(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{cmd}: {r.stderr[-2000:]}"
    return r.stdout


@pytest.mark.parametrize("opts", ["", "max_threads=4"], ids=["one-worker", "four-workers"])
def test_workload_under_the_filter(mount, lowers, opts):
    (l,) = lowers(1)
    build_tree(l)
    expect = H.contents(l / "src")
    m = mount([l], opts)
    pid = main_pid(m)
    assert seccomp_status(pid) == filtered(pid)
    top = m.path
    run(["cp", "-a", "src", "copy"], top)
    assert H.contents(top / "copy") == expect
    run(["tar", "cf", "t.tar", "src"], top)
    (top / "untar").mkdir()
    run(["tar", "xf", "../t.tar"], top / "untar")
    assert H.contents(top / "untar/src") == expect
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", HOME=str(top))
    run(["git", "init", "-q", "repo"], top, env)
    run(["cp", "-a", "../src", "."], top / "repo")
    run(["git", "add", "-A"], top / "repo", env)
    run(["git", "commit", "-q", "-m", "under seccomp"], top / "repo", env)
    assert run(["git", "log", "--oneline"], top / "repo", env).count("\n") == 1
    assert run(["git", "status", "--porcelain"], top / "repo", env) == ""
    python_file_ops(top)
    found = run(["find", ".", "-type", "f"], top).split()
    assert len(found) > 4 * 32
    # several readers at once (worker threads with max_threads=4)
    readers = [subprocess.Popen(["cat", *[str(top / "src" / f"d{i}" / n)
                                          for n in os.listdir(top / "src" / f"d{i}")]],
                                stdout=subprocess.DEVNULL) for i in range(5)]
    assert [r.wait(timeout=60) for r in readers] == [0] * 5
    assert H.pid_alive(pid), "the daemon died"
    assert seccomp_status(pid) == filtered(pid)


@pytest.mark.parametrize("end", ["fusermount3", "SIGTERM"])
def test_clean_end_under_the_filter(mount, lowers, end):
    """The end (libfuse's unmount, freeing, exit) makes only allowed calls:
    the daemon exits (not killed), nothing on stderr."""
    (l,) = lowers(1)
    write(l / "f", "x" * 100000)
    with foreground(mount, [l], "max_threads=2") as (p, errpath, mp):
        (mp / "g").write_text("upper")
        f = open(mp / "f", "rb")
        try:
            assert f.read(10) == b"x" * 10
            if end == "SIGTERM":
                # with a file still open: its handle is freed at the end
                os.kill(p.pid, signal.SIGTERM)
            else:
                f.close()
                subprocess.run(["fusermount3", "-u", str(mp)], check=True,
                               capture_output=True, timeout=START)
            p.wait(timeout=START)
        finally:
            f.close()
        err = errpath.read_text(errors="replace")
        assert "seccomp" not in err, err
        # (libfuse reports an end by signal as an error: exit status 1)
        assert p.returncode == (1 if end == "SIGTERM" else 0), f"exit {p.returncode}: {err}"
        assert not H.is_mounted(mp)


def test_root_unmounts_itself_where_libmount_keeps_utab(memoverlay_build):
    """Where libmount keeps /run/mount/utab (systemd hosts), libfuse 3.17+
    unmounts a root daemon's mount by forking /bin/umount, which the filter
    refuses: the daemon unmounts itself first. Run in a private mount
    namespace with a utab of its own (the host's /run is left alone)."""
    with H.shared_tmpdir("mo-utab.") as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x\n")
        mnt = mkdir(d / "mnt")
        script = (
            "mount -t tmpfs tmpfs /run && mkdir /run/mount && : > /run/mount/utab\n"
            f"{memoverlay_build.shell_cmd} -o lowerdir={lower} {mnt}\n"
            f"cat {mnt}/f\n"
            f"pid=$(for p in $(pgrep -x memoverlay); do grep -q {mnt} /proc/$p/cmdline && "
            "echo $p; done; true)\n"
            "kill -TERM $pid\n"
            f"i=0; while kill -0 $pid 2>/dev/null && [ $i -lt {START * 10} ]; do "
            "sleep 0.1; i=$((i+1)); done\n"
            "kill -0 $pid 2>/dev/null && { echo 'daemon still running'; kill -9 $pid; }\n"
            f"grep -c ' {mnt} ' /proc/self/mounts || true\n"
            f"umount -l {mnt} 2>/dev/null || true\n")
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-ec",
                            script], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["x", "0"], r.stdout + r.stderr
        assert not H.wait_pids_gone(H.processes_mentioning(d), START)
    assert not left, left


# --------------------------------------------------------------------------
# Not root


def test_filter_on_for_a_plain_user(memoverlay_build):
    if not shutil.which("fusermount3"):
        pytest.skip("fusermount3 not installed")
    uid, gid, _ = H.ensure_test_user()
    with H.shared_tmpdir("mo-seccomp.", owner=(uid, gid)) as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x\n")
        mnt = mkdir(d / "mnt")
        for p in (lower, lower / "f", mnt):
            os.chown(p, uid, gid)
        r = subprocess.run(H.as_user(uid, gid) + [*memoverlay_build.cmd, "-o",
                                                  f"lowerdir={lower}", str(mnt)],
                           capture_output=True, text=True, timeout=START,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids = H.processes_mentioning(d)
        main = H.main_daemon_pids(pids)
        assert len(main) == 1, f"{pids} {[H.proc_comm(p) for p in pids]}"
        assert seccomp_status(main[0]) == filtered(main[0])
        r = subprocess.run(H.as_user(uid, gid) + ["/bin/sh", "-ec", f"echo y > {mnt}/g; "
                                                  f"cat {mnt}/f {mnt}/g"],
                           capture_output=True, text=True, timeout=START)
        assert r.returncode == 0 and r.stdout == "x\ny\n", r.stderr
        subprocess.run(H.as_user(uid, gid) + ["fusermount3", "-u", str(mnt)], timeout=START,
                       check=True, capture_output=True)
        assert not H.wait_pids_gone(pids, START)
    assert not left, left


def test_filter_on_as_root_of_a_user_namespace(memoverlay_build):
    with H.shared_tmpdir("mo-seccomp.") as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x\n")
        mnt = mkdir(d / "mnt")
        script = (f"{memoverlay_build.shell_cmd} -o lowerdir={lower} {mnt}\n"
                  f"for p in $(pgrep -x memoverlay); do if grep -q {mnt} /proc/$p/cmdline; then "
                  f"grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/$p/status; "
                  f"echo \"rings:\t$(ls -l /proc/$p/fd | grep -c 'io_uring]' || :)\"; fi; "
                  f"done\n"
                  f"echo y > {mnt}/g\ncat {mnt}/f {mnt}/g\numount {mnt}\n")
        r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        st = dict(line.split(":\t") for line in r.stdout.splitlines() if ":\t" in line)
        filters = "2" if st.get("rings", "0") != "0" else "1"
        assert (st.get("Seccomp"), st.get("Seccomp_filters")) == ("2", filters), r.stdout
        assert st.get("NoNewPrivs") == "1", r.stdout
        assert r.stdout.splitlines()[-2:] == ["x", "y"]
        assert not H.wait_pids_gone(H.processes_mentioning(d), START)
    assert not left, left

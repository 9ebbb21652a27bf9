"""FUSE over io_uring (-o io_uring=auto|on|off, fs/transport.c), as a user
sees it:

- io_uring=on mounts and serves through the rings, and the test proves it:
  the daemon holds io_uring file descriptors, libfuse's fuse-ring-N threads
  run, the rings' completion counters (/proc/PID/fdinfo, CqTail) grow with
  every request while the daemon makes next to no read system calls (each
  request taken from /dev/fuse costs at least one: a read, or a splice
  into a pipe and a read of it) — and with io_uring=off the same measure
  shows the opposite;
- it survives cp -a of a tree, random 4 KiB writes checked against a
  model, and an untar; it unmounts cleanly with umount, with a lazy
  unmount from outside, and as the plain user with fusermount3 -u;
- io_uring=on where the kernel does not offer the ring (enable_uring=N),
  where libfuse has none (a 3.14 build), or where the ring fails to start
  at INIT: one line, non-zero exit, nothing mounted; a bad value likewise;
- root of a user namespace (unshare -Urm) gets the ring too.

The tests that need the ring set /sys/module/fuse/parameters/enable_uring
to Y (root) and put it back afterwards. A variant build whose options name
io_uring (MEMOVERLAY_BUILDS=build@io_uring=off) skips them: they choose the
transport themselves.
"""

import os
import random
import re
import shutil
import subprocess
import tarfile
import time

import pytest

import helpers as H
from helpers import write, mkdir

pytestmark = pytest.mark.memoverlay_only

ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"
START = H.DEADLINE


def build_has_ring(build):
    r = subprocess.run([str(build.exe), "-V"], capture_output=True, text=True, timeout=30)
    return "io_uring yes" in r.stdout


@pytest.fixture(autouse=True)
def _own_transport(memoverlay_build):
    if "io_uring" in memoverlay_build.opts:
        pytest.skip("the variant fixes the transport; these tests choose it themselves")


def set_enable_uring(value):
    with open(ENABLE_URING, "w") as f:
        f.write(value + "\n")


def get_enable_uring():
    with open(ENABLE_URING) as f:
        return f.read().strip()


@pytest.fixture
def kernel_ring():
    """enable_uring=Y for the test, then as it was."""
    if not os.path.exists(ENABLE_URING):
        pytest.skip("this kernel has no FUSE over io_uring")
    before = get_enable_uring()
    try:
        set_enable_uring("Y")
    except OSError as e:
        pytest.skip(f"cannot set {ENABLE_URING}: {e}")
    try:
        yield
    finally:
        set_enable_uring(before)


@pytest.fixture
def ring_build(memoverlay_build, kernel_ring):
    if not build_has_ring(memoverlay_build):
        pytest.skip("this build's libfuse has no io_uring")
    return memoverlay_build


def main_pid(m):
    pids = H.main_daemon_pids(m.pids) or m.pids
    assert len(pids) == 1, f"daemon pids {m.pids}"
    return pids[0]


def ring_threads(pid):
    return sorted(c for c in (H.proc_comm(f"{pid}/task/{t}")
                              for t in os.listdir(f"/proc/{pid}/task")) if c)


def completions(pid):
    """Completions the daemon's rings have posted so far (sum of CqTail)."""
    total = 0
    for fd in H.ring_fds(pid):
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            m = re.search(r"^CqTail:\s*(\d+)", f.read(), re.M)
            total += int(m.group(1)) if m else 0
    return total


def read_calls(pid):
    """Read system calls the whole daemon has made (/proc/PID/io, all
    threads). Every request libfuse takes from /dev/fuse costs at least one
    (small ones are spliced into a pipe and then read from it); requests
    served by the rings cost none. A count, not a timing: load cannot move
    it."""
    with open(f"/proc/{pid}/io") as f:
        return int(re.search(r"^syscr:\s*(\d+)", f.read(), re.M).group(1))


def small_requests(path, n):
    """N creates, each with a write, a release and a listxattr: 3N requests
    or more, and no FORGET (the kernel sends those through /dev/fuse even
    with the ring)."""
    d = mkdir(path / "many")
    for i in range(n):
        p = d / f"f{i}"
        p.write_bytes(b"x")
        os.listxattr(p)


def test_on_serves_through_the_ring(mount, lowers, ring_build):
    (l,) = lowers(1)
    write(l / "f", "lower\n")
    m = mount([l], "io_uring=on")
    pid = main_pid(m)
    rings = H.ring_fds(pid)
    assert len(rings) >= 1, "no io_uring file descriptor in the daemon"
    threads = ring_threads(pid)
    assert sum(t.startswith("fuse-ring-") for t in threads) == len(rings), threads
    c0, r0 = completions(pid), read_calls(pid)
    small_requests(m.path, 200)
    c1, r1 = completions(pid), read_calls(pid)
    assert c1 - c0 >= 600, f"the rings completed {c1 - c0} requests for 600 or more"
    assert r1 - r0 < 60, f"the daemon made {r1 - r0} read calls: requests bypass the ring"
    assert (m / "f").read_text() == "lower\n"


def test_off_reads_dev_fuse(mount, lowers, ring_build):
    """The measure above tells the two apart."""
    (l,) = lowers(1)
    m = mount([l], "io_uring=off")
    pid = main_pid(m)
    assert H.ring_fds(pid) == []
    assert not any(t.startswith("fuse-ring-") for t in ring_threads(pid))
    r0 = read_calls(pid)
    small_requests(m.path, 200)
    assert read_calls(pid) - r0 >= 600


def test_auto_takes_the_ring(mount, lowers, ring_build):
    (l,) = lowers(1)
    m = mount([l])
    assert H.ring_fds(main_pid(m)), "io_uring=auto (the default) did not take the ring"


def test_debug_names_the_transport(mount, lowers, ring_build, tmp_path):
    (l,) = lowers(1)
    mp = mkdir(tmp_path / "mnt-d")
    errf = tmp_path / "d.err"
    with open(errf, "wb") as fe:
        p = subprocess.Popen([*ring_build.cmd, str(mp), "-d", "-o", f"lowerdir={l},io_uring=on"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fe)
    try:
        # -d stays in the foreground; the mount shows, and serves, a little
        # before the daemon names the transport: wait for the line
        line = re.compile(r"^memoverlay: transport: io_uring, \d+ rings$", re.M)
        assert H.wait_for(lambda: line.search(errf.read_text(errors="replace")) or
                          p.poll() is not None, START)
        assert p.poll() is None, errf.read_text(errors="replace")[-2000:]
        os.listdir(mp)
    finally:
        H.unmount(mp)
        try:
            p.wait(timeout=START)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert p.returncode == 0


def make_tree(root, files=300):
    rnd = random.Random(7)
    for i in range(files):
        d = root / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        write(d / f"f{i}", bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 9000))))
    os.symlink("d0/e0/f0", root / "link")


def content(root, mtime=True):
    """{relative path: what a copy must keep}: type and mode, file data and
    mtime, symlink targets."""
    out = {}
    for r in H.tree_records(root):
        keep = {k: r[k] for k in ("mode", "sha256", "target") if k in r}
        if "sha256" in r and mtime:   # (tar keeps microseconds)
            keep["mtime"] = r["mtime"]
        out[r["path"]] = keep
    return out


def test_on_survives_a_workload(mount, lowers, ring_build, tmp_path):
    (l,) = lowers(1)
    src = mkdir(tmp_path / "src")
    make_tree(src)
    make_tree(mkdir(l / "base"), files=50)
    m = mount([l], "io_uring=on")
    pid = main_pid(m)
    c0 = completions(pid)

    # cp -a of a tree, then compared
    subprocess.run(["cp", "-a", str(src), str(m / "copy")], check=True, timeout=120)
    assert content(m / "copy") == content(src)

    # fio-like: random 4 KiB writes into an 8 MiB file, checked against a model
    size, block = 8 << 20, 4096
    model = bytearray(size)
    rnd = random.Random(1)
    fd = os.open(m / "rand", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, size)
        for _ in range(3000):
            off = rnd.randrange(size // block) * block
            data = rnd.randbytes(block)
            assert os.pwrite(fd, data, off) == block
            model[off:off + block] = data
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (m / "rand").read_bytes() == bytes(model)

    # untar a tree (and copy up what it overwrites in the lower)
    tarpath = tmp_path / "t.tar"
    with tarfile.open(tarpath, "w") as t:
        t.add(src, arcname="base")
    subprocess.run(["tar", "-xf", str(tarpath), "-C", str(m)], check=True, timeout=120)
    got = content(m / "base", mtime=False)
    for rel, rec in content(src, mtime=False).items():
        assert got.get(rel) == rec, rel
    assert completions(pid) - c0 > 1000
    assert len(H.ring_fds(pid)) >= 1


def test_lazy_unmount_from_outside(mount, lowers, ring_build):
    (l,) = lowers(1)
    write(l / "f", "x")
    m = mount([l], "io_uring=on")
    pids = list(m.pids)
    assert (m / "f").read_text() == "x"
    subprocess.run(["umount", "-l", str(m.path)], check=True, timeout=30)
    assert not H.wait_pids_gone(pids, START), "the daemon did not exit after umount -l"
    assert not H.is_mounted(m.path)


def test_plain_user_fusermount(ring_build):
    if not shutil.which("fusermount3"):
        pytest.skip("fusermount3 not installed")
    uid, gid, _ = H.ensure_test_user()
    with H.shared_tmpdir("mo-uring.", owner=(uid, gid)) as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x\n")
        mnt = mkdir(d / "mnt")
        for p in (lower, lower / "f", mnt):
            os.chown(p, uid, gid)
        r = subprocess.run(H.as_user(uid, gid) + [*ring_build.cmd, "-o",
                                                  f"lowerdir={lower},io_uring=on", str(mnt)],
                           capture_output=True, text=True, timeout=START,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids = H.processes_mentioning(d)
        main = H.main_daemon_pids(pids)
        assert len(main) == 1 and H.ring_fds(main[0]), r.stderr
        r = subprocess.run(H.as_user(uid, gid) + ["/bin/sh", "-ec",
                                                  f"mkdir {mnt}/d; for i in 1 2 3 4 5; do "
                                                  f"echo $i > {mnt}/d/$i; done; "
                                                  f"cat {mnt}/f {mnt}/d/5; rm -r {mnt}/d"],
                           capture_output=True, text=True, timeout=START)
        assert r.returncode == 0 and r.stdout == "x\n5\n", r.stderr
        subprocess.run(H.as_user(uid, gid) + ["fusermount3", "-u", str(mnt)], timeout=START,
                       check=True, capture_output=True)
        assert not H.wait_pids_gone(pids, START)
        assert not H.is_mounted(mnt)
    assert not left, left


def test_root_of_a_user_namespace(ring_build):
    with H.shared_tmpdir("mo-uring.") as (d, left):
        lower = mkdir(d / "lower")
        write(lower / "f", "x\n")
        mnt = mkdir(d / "mnt")
        script = (f"{ring_build.shell_cmd} -o lowerdir={lower},io_uring=on {mnt}\n"
                  f"for p in $(pgrep -x memoverlay); do grep -q {mnt} /proc/$p/cmdline && "
                  f"ls -l /proc/$p/fd | grep -c 'io_uring]'; done\n"
                  f"echo y > {mnt}/g\ncat {mnt}/f {mnt}/g\numount {mnt}\n")
        r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0 and "io_uring=on: " in r.stderr:
            pytest.skip(f"no FUSE over io_uring in a user namespace here: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert int(lines[0]) >= 1, r.stdout
        assert lines[-2:] == ["x", "y"]
        assert not H.wait_pids_gone(H.processes_mentioning(d), START)
    assert not left, left


def refused(mount, tmp_path, opts, *words):
    mp = mkdir(tmp_path / "mnt-refused")
    (tmp_path / "l").mkdir(exist_ok=True)
    r = mount.run([mp, "-o", f"lowerdir={tmp_path / 'l'},{opts}"])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    assert not H.is_mounted(mp)


def test_bad_value(mount, tmp_path):
    refused(mount, tmp_path, "io_uring=sometimes", "io_uring", "'sometimes'")


def test_on_without_the_kernel_offering_it(mount, tmp_path, memoverlay_build):
    if not build_has_ring(memoverlay_build):
        pytest.skip("this build's libfuse has no io_uring (test_on_without_libfuse_ring)")
    if not os.path.exists(ENABLE_URING):
        pytest.skip("this kernel has no FUSE over io_uring")
    before = get_enable_uring()
    try:
        set_enable_uring("N")
        refused(mount, tmp_path, "io_uring=on", "io_uring=on", f"echo Y > {ENABLE_URING}")
        m = mount([mkdir(tmp_path / "l2")], "io_uring=auto")
        assert H.ring_fds(main_pid(m)) == []
    finally:
        set_enable_uring(before)


def test_on_without_libfuse_ring(mount, tmp_path, memoverlay_build):
    if build_has_ring(memoverlay_build):
        pytest.skip("this build's libfuse has io_uring")
    refused(mount, tmp_path, "io_uring=on", "io_uring=on", "libfuse")
    for opts in ("io_uring=auto", "io_uring=off"):
        m = mount([mkdir(tmp_path / f"l-{opts[9:]}")], opts)
        assert H.ring_fds(main_pid(m)) == []


def test_on_when_the_ring_fails_at_init(mount, tmp_path, ring_build):
    """libfuse starts the ring while it answers INIT; here registering
    /dev/fuse with the rings fails (strace injects the error; the filter is
    off, as the injection rewrites the call). libfuse 3.18 misses that
    failure, and a mount whose rings never register would hang: the
    daemon must notice and refuse, leaving nothing mounted."""
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    if ring_build.sanitized:
        pytest.skip("LeakSanitizer does not run under ptrace")
    mp = mkdir(tmp_path / "mnt-fail")
    l = mkdir(tmp_path / "l")
    r = subprocess.run(["strace", "-f", "-o", "/dev/null", "-e", "trace=io_uring_register",
                        "-e", "inject=io_uring_register:error=EPERM", *ring_build.cmd, str(mp),
                        "-o", f"lowerdir={l},io_uring=on,seccomp=off"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        assert r.returncode != 0
        assert "memoverlay: FUSE over io_uring started but does not serve" in r.stderr, r.stderr
        assert not H.is_mounted(mp)
        assert not H.wait_pids_gone(H.daemon_pids(mp, resolve=False), START)
    finally:
        if H.is_mounted(mp):
            subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=30)

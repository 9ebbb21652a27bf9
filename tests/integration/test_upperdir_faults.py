"""upperdir= write-back interrupted (issue 14): the daemon killed, or one of
its system calls failing, at a chosen point of a write-back. The faults are
injected into the real daemon by strace (-e inject=SYSCALL:signal=KILL at
the Nth call), so the daemon carries no test hook.

After a kill, every object in the upper directory is as it was before the
write-back or as it is after a complete one, never half-written (a file's
bytes, a removed directory's contents); the next mount clears what the
killed pass left in WORKDIR/work and shows that state, read the same by
kernel overlayfs. After a failed rename, the pass reports the error and
what it did not write stays to be written by the next one."""

import errno
import os
import shutil
import subprocess

import pytest

import helpers as H
from helpers import write, rd

pytestmark = [pytest.mark.memoverlay_only,
              pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")]

N_FILES = 30
N_GONE = 40


@pytest.fixture
def setup(lowers, tmp_path, mount):
    """A lower layer, and an upper directory a first (whole) write-back
    filled: version 1 of every file, a directory of upper-only files, a
    whiteout. Returns (layers, upper, work)."""
    (low,) = lowers(1)
    for i in range(N_FILES):
        write(low / f"f{i:02}", f"lower {i}\n")
    write(low / "lower_gone", "lg")
    write(low / "was_file", "file")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount([low], f"upperdir={upper},workdir={work}")
    for i in range(N_FILES):
        write(m / f"f{i:02}", f"version 1 of {i}\n" * 200)
    for i in range(N_GONE):
        write(m / f"gone_dir/sub{i % 4}/g{i}", f"g{i}")
    os.unlink(m / "lower_gone")
    write(m / "was_file", "file v1")
    mount.unmount(m)
    return [low], upper, work


def second_changes(m):
    """The changes of the interrupted pass: every file rewritten, an
    upper-only tree removed, a lower file removed, a file turned into a
    directory, a new tree."""
    for i in range(N_FILES):
        write(m / f"f{i:02}", f"version 2 of {i}\n" * 300)
    shutil.rmtree(m / "gone_dir")
    os.unlink(m / "f00")
    os.unlink(m / "was_file")
    write(m / "was_file/inside", "in")
    for i in range(10):
        write(m / f"new_dir/n{i}", f"n{i}")


def records(root):
    """tree_records without times (directory times move with every entry
    renamed in or out) and without the root's own record."""
    return {r["path"]: {k: v for k, v in r.items() if k not in ("mtime", "ctime", "path")}
            for r in H.tree_records(root) if r["path"] != "."}


def strace_argv(mount, layers, opts, mp, inject):
    syscall = inject.split(":")[0]
    return ["strace", "-D", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
            "-e", f"inject={inject}", *mount.argv(layers, opts, mp)]


def wait_tracers_gone(mp):
    pids = [pid for pid, argv in H.proc_cmdlines()
            if argv and os.path.basename(argv[0]) == "strace" and os.fspath(mp) in argv]
    assert not H.wait_pids_gone(pids, H.DEADLINE)


def expected_after(setup, mount, tmp_path):
    """The upper directory a write-back of second_changes() makes when
    nothing goes wrong, from a copy of the same starting upper."""
    layers, upper, _ = setup
    ref_upper, ref_work = tmp_path / "ref_upper", tmp_path / "ref_work"
    subprocess.run(["cp", "-a", upper, ref_upper], check=True)
    ref_work.mkdir()
    m = mount(layers, f"upperdir={ref_upper},workdir={ref_work}")
    second_changes(m)
    mount.unmount(m)
    return records(ref_upper)


# strace's N counts calls of that system call in each thread; the write-back
# runs in one thread. renameat: each object moved into place (the files, the
# new trees); renameat2: the directory swapped over a file; unlinkat: inside
# the removal of gone_dir, after it has left the upper directory; syncfs:
# between making every object in work/ and the first rename.
KILL_POINTS = ["renameat:signal=KILL:when=1",
               "renameat:signal=KILL:when=12",
               "renameat2:signal=KILL:when=1",
               "unlinkat:signal=KILL:when=5",
               "syncfs:signal=KILL:when=1"]


@pytest.mark.parametrize("inject", KILL_POINTS)
def test_kill_9_in_the_middle_of_a_write_back(setup, mount, tmp_path, inject):
    layers, upper, work = setup
    before = records(upper)
    after = expected_after(setup, mount, tmp_path)
    assert before != after

    mp = tmp_path / "mnt_traced"
    mp.mkdir()
    # the fault must hit the unmount's pass, not one while idle
    o = f"upperdir={upper},workdir={work},writeback_delay=off"
    m = mount(layers, o, mountpoint=mp, argv=strace_argv(mount, layers, o, mp, inject))
    second_changes(m)
    pids = list(m.pids)
    mount.unmount(m)                      # the write-back starts; the fault ends it
    wait_tracers_gone(mp)
    for pid in pids:                      # it was killed, not finished
        assert not H.pid_alive(pid)

    now = records(upper)
    torn = [p for p in set(before) | set(now) | set(after)
            if now.get(p) not in (before.get(p), after.get(p))]
    assert not torn, {p: (before.get(p), now.get(p), after.get(p)) for p in sorted(torn)[:5]}
    left = os.listdir(work / "work")
    assert now != after or left, "the fault came after the write-back: it tested nothing"
    # a removed directory leaves in one step
    gone = {p for p in before if p == "gone_dir" or p.startswith("gone_dir/")}
    assert gone <= set(now) or not gone & set(now)
    if inject.startswith("syncfs"):
        assert now == before              # nothing renamed before the objects are on disk

    # the next mount clears work/ and shows what the directory holds, as
    # kernel overlayfs reads it
    m = mount(layers, o)
    assert os.listdir(work / "work") == []
    mine = H.view(m, mtimes=False)
    mount.unmount(m)
    assert records(upper) == now
    kmp, kwork = tmp_path / "kmnt", tmp_path / "kwork"
    kmp.mkdir()
    kwork.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={layers[0]},upperdir={upper},workdir={kwork}", kmp],
                   check=True)
    try:
        kernel = H.view(kmp, mtimes=False)
    finally:
        subprocess.run(["umount", kmp], check=True)
    assert mine == kernel, H.view_diff(kernel, mine)


def test_failed_rename_is_reported_and_written_by_the_next_pass(setup, mount, tmp_path):
    """fsync writes back; one rename into place fails (the target was made
    immutable underneath): fsync reports EPERM, and what that pass did not
    place is written by the next one, at unmount. (A real failure, not
    strace's: strace fails a call in every thread, and the second pass runs
    in another thread.)"""
    layers, upper, work = setup
    after = expected_after(setup, mount, tmp_path)
    m = mount(layers, f"upperdir={upper},workdir={work},writeback_delay=off")
    second_changes(m)
    subprocess.run(["chattr", "+i", upper / "f05"], check=True)
    try:
        fd = os.open(m / "f01", os.O_RDONLY)
        try:
            assert H.errno_of(os.fsync, fd) == errno.EPERM
        finally:
            os.close(fd)
        assert rd(upper / "f05") == b"version 1 of 5\n" * 200
    finally:
        subprocess.run(["chattr", "-i", upper / "f05"], check=True)
    assert os.listdir(work / "work") == []
    mount.unmount(m)
    now = records(upper)
    assert now == after, {p: (now.get(p), after.get(p)) for p in set(now) | set(after)
                          if now.get(p) != after.get(p)}

"""upperdir=/workdir= (issue 14): the in-memory upper written back into an
overlay-format upper directory — at unmount, SIGTERM and fsync, not on a
crash, and with volatile at unmount only — and read back the same by kernel
overlayfs and by a new memoverlay mount. The lower layers never change (the
mount fixture checks them byte for byte)."""

import errno
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

import helpers as H
from helpers import write, mkdir, symlink, rd

pytestmark = pytest.mark.memoverlay_only


@pytest.fixture
def layers(lowers, tmp_path):
    top, bot = lowers(2)
    write(bot / "keep", "keep")
    write(bot / "gone", "gone")
    write(bot / "moved", "moved")
    write(bot / "ldir/a", "a")
    write(bot / "ldir/sub/b", "b")
    write(bot / "rmdir/c", "c")
    write(bot / "merged/from_bot", "mb")
    write(top / "merged/from_top", "mt")
    write(top / "append", "one\n")
    write(top / "modes", "m", mode=0o644)
    write(top / "was_file", "f")
    os.setxattr(bot / "keep", "user.k", b"v")
    upper = tmp_path / "upper"
    work = tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return [top, bot], upper, work


def opts(upper, work, extra=""):
    o = f"upperdir={upper},workdir={work}"
    return o + ("," + extra if extra else "")


def change(m):
    """What a container does: every kind of change once."""
    write(m / "new", "new file")
    with open(m / "append", "a") as f:
        f.write("two\n")
    os.unlink(m / "gone")
    os.rename(m / "moved", m / "moved_to")
    # a lower directory, renamed (mv: kernel overlayfs without redirect_dir
    # says EXDEV, and mv copies)
    subprocess.run(["mv", m / "ldir", m / "ldir_renamed"], check=True)
    write(m / "ldir_renamed/added", "added")
    subprocess.run(["rm", "-rf", m / "rmdir"], check=True)
    mkdir(m / "rmdir")                                  # a new one where a lower one was
    write(m / "rmdir/fresh", "fresh")
    write(m / "merged/added", "ma")
    os.unlink(m / "merged/from_bot")
    os.chmod(m / "modes", 0o600)
    os.chown(m / "modes", 1234, 5678)
    os.setxattr(m / "new", "user.a", b"1")
    os.setxattr(m / "keep", "user.k", b"changed")
    os.link(m / "new", m / "new_link")
    symlink(m / "sl", "new")
    os.mkfifo(m / "fifo")
    os.mknod(m / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.unlink(m / "was_file")
    mkdir(m / "was_file")
    write(m / "deep/a/b/c", "deep")
    os.utime(m / "modes", ns=(1_000_000_123, 2_000_000_456))


def kernel_view(layers, upper, tmp_path):
    """The merged tree kernel overlayfs makes of the same lower and upper."""
    mp = tmp_path / "kmnt"
    kwork = tmp_path / "kwork"
    mp.mkdir(exist_ok=True)
    kwork.mkdir(exist_ok=True)
    lo = ":".join(os.fspath(p) for p in layers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lo},upperdir={upper},workdir={kwork}", mp],
                   check=True, capture_output=True, text=True)
    try:
        return H.view(mp, mtimes=False)
    finally:
        subprocess.run(["umount", mp], check=True)


def files_only_mtimes(v):
    """Without times: the kernel's write cache may move a file's mtime by
    a few ms at its last flush; the times set explicitly are checked
    apart (change() sets one)."""
    return {p: {k: x for k, x in e.items() if k != "mtime"} for p, e in v.items()}


def test_written_back_tree_reads_the_same_everywhere(mount, layers, tmp_path):
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    change(m)
    seen = H.view(m)
    mount.unmount(m)

    # a kernel overlayfs mount of the same layers shows the same tree
    k = kernel_view(lay, upper, tmp_path)
    no_times = {p: {f: x for f, x in e.items() if f != "mtime"} for p, e in seen.items()}
    assert k == no_times, H.view_diff(no_times, k)

    # and so does memoverlay, mounted again on it (times too)
    m2 = mount(lay, opts(upper, work))
    again = H.view(m2)
    assert files_only_mtimes(again) == files_only_mtimes(seen), \
        H.view_diff(files_only_mtimes(seen), files_only_mtimes(again))
    assert rd(m2 / "append") == b"one\ntwo\n"
    assert os.lstat(m2 / "modes").st_mtime_ns == 2_000_000_456
    assert os.stat(m2 / "new").st_ino == os.stat(m2 / "new_link").st_ino
    mount.unmount(m2)

    # the format: whiteouts, opaque directories, real owners
    assert H.xattr_list(upper / "rmdir") == [("trusted.overlay.opaque", b"y")]
    st = os.lstat(upper / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    st = os.lstat(upper / "modes")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o600)
    assert os.listdir(work / "work") == []


def test_second_write_back_writes_only_what_changed(mount, layers):
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    for i in range(20):
        write(m / f"f{i}", str(i))
    fd = os.open(m / "f0", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    inos = {f"f{i}": os.lstat(upper / f"f{i}").st_ino for i in range(20)}
    write(m / "f3", "changed")
    fd = os.open(m / "f3", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    after = {f"f{i}": os.lstat(upper / f"f{i}").st_ino for i in range(20)}
    assert [n for n in inos if inos[n] != after[n]] == ["f3"]
    assert rd(upper / "f3") == b"changed"
    mount.unmount(m)


def fsync_mount(m):
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_pass_after_pass_leaves_hard_links_alone(mount, layers):
    """A pass with nothing changed writes nothing: a hard link already in
    DIR under both names is not linked again (rename(2) over another name
    of the same inode does nothing, and left the new link in WORK/work)."""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work, "writeback_delay=off"))
    write(m / "a", "linked")
    os.link(m / "a", m / "b")
    mkdir(m / "d")
    os.link(m / "a", m / "d/c")
    fsync_mount(m)
    first = H.tree_records(upper), H.tree_records(work)
    assert os.lstat(upper / "b").st_nlink == 3 and os.listdir(work / "work") == []
    fsync_mount(m)
    mount.unmount(m)
    assert (H.tree_records(upper), H.tree_records(work)) == first


@pytest.mark.parametrize("away, kept", [("a", "b"), ("b", "a")])
def test_hard_link_whose_other_name_is_exchanged_away(mount, layers, tmp_path, away, kept):
    """A hard-linked file written back under both names, then one name
    exchanged with another file: the next pass must link the file's own
    inode, not whatever the pass put at the name it came from (it linked
    the other file's, and the mount read that file's data after). Each
    name in turn: the walk meets them in hash order."""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work, "writeback_delay=off"))
    write(m / "a", "the linked file")
    os.link(m / "a", m / "b")
    write(m / "r", "the other file")
    fsync_mount(m)
    H.renameat2(m / away, m / "r", H.RENAME_EXCHANGE)
    fsync_mount(m)
    assert rd(upper / away) == b"the other file"
    assert rd(upper / kept) == rd(upper / "r") == b"the linked file"
    assert os.lstat(upper / kept).st_ino == os.lstat(upper / "r").st_ino
    assert os.listdir(work / "work") == []
    fsync_mount(m)      # and once more: its origin is still its own
    assert rd(upper / kept) == rd(upper / "r") == b"the linked file"
    assert rd(m / kept) == b"the linked file"
    seen = H.view(m)
    mount.unmount(m)
    kernel_reads_like(lay, upper, tmp_path, seen)


def test_no_whiteout_inside_a_directory_written_opaque(mount, lowers, tmp_path):
    """A lower directory renamed onto another lower directory's place is
    written as an opaque copy; a file removed from it later is removed, not
    whited out: kernel overlayfs lists a whiteout inside an opaque
    directory as a name it cannot look up."""
    (low,) = lowers(1)
    write(low / "p/f", "from p")
    write(low / "q/f", "from q")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    shutil.rmtree(m / "q")
    os.rename(m / "p", m / "q")
    fsync_mount(m)
    os.unlink(m / "q/f")
    seen = H.view(m)
    mount.unmount(m)
    assert not os.path.lexists(upper / "q/f")
    kernel_reads_like([low], upper, tmp_path, seen)


@pytest.fixture
def linked_lower(lowers, tmp_path):
    """A lower file with two names, "a" and "d/h", and an empty upper."""
    (low,) = lowers(1)
    write(low / "a", "old")
    mkdir(low / "d")
    write(low / "d/other", "other")
    os.link(low / "a", low / "d/h")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return low, upper, work


def remount(mount, m, low, upper, work):
    mount.unmount(m)
    return mount([low], opts(upper, work, "writeback_delay=off"))


@pytest.mark.parametrize("through", ["a", "d/h"])
def test_lower_hard_link_written_through_one_name(mount, linked_lower, tmp_path, through):
    """Written through either name, the mount shows one inode: both names
    show the new data. Copy-up names it in the upper only where the mount
    first found it; the write-back must write the other lower name too, as
    a hard link of the same file, or that name shows the old data on the
    next mount (and in kernel overlayfs)."""
    low, upper, work = linked_lower
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    write(m / through, "new")
    assert rd(m / "a") == rd(m / "d/h") == b"new"
    seen = H.view(m)
    m = remount(mount, m, low, upper, work)
    assert rd(m / "d/h") == rd(m / "a") == b"new"
    assert os.lstat(m / "a").st_ino == os.lstat(m / "d/h").st_ino
    mount.unmount(m)
    assert os.lstat(upper / "a").st_ino == os.lstat(upper / "d/h").st_ino
    kernel_reads_like([low], upper, tmp_path, seen)


def test_lower_hard_link_written_again_after_a_pass(mount, linked_lower, tmp_path):
    """Pass after pass the names stay one file: a fresh copy under one name
    is linked under the other in the same pass."""
    low, upper, work = linked_lower
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    write(m / "d/h", "first")
    fsync_mount(m)
    assert rd(upper / "a") == rd(upper / "d/h") == b"first"
    write(m / "a", "second")
    fsync_mount(m)
    assert rd(upper / "a") == rd(upper / "d/h") == b"second"
    assert os.lstat(upper / "a").st_ino == os.lstat(upper / "d/h").st_ino
    assert os.listdir(work / "work") == []
    seen = H.view(m)
    mount.unmount(m)
    kernel_reads_like([low], upper, tmp_path, seen)


def test_lower_hard_link_whose_first_name_is_removed(mount, linked_lower, tmp_path):
    """The name copy-up gave it is unlinked; only the other lower name
    shows the changed file now, and is what the write-back writes."""
    low, upper, work = linked_lower
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    write(m / "a", "new")
    os.unlink(m / "a")
    assert rd(m / "d/h") == b"new"
    seen = H.view(m)
    m = remount(mount, m, low, upper, work)
    assert rd(m / "d/h") == b"new"
    assert not os.path.lexists(m / "a")
    mount.unmount(m)
    kernel_reads_like([low], upper, tmp_path, seen)


@pytest.mark.parametrize("first_up", [False, True])
def test_lower_hard_link_in_a_directory_written_whole(mount, linked_lower, tmp_path, first_up):
    """A renamed directory is written whole, lower names and all. Its
    lower name of a hard link must stay the mount's one inode after the
    pass: looked up for the first time then (through the upper directory,
    its origin now), it is the same file as the other name, and shows
    what is written through that one."""
    low, upper, work = linked_lower
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    ino = os.lstat(m / "a").st_ino
    if first_up:
        os.link(m / "a", m / "b")   # copied up, named "a" and "b"
    os.rename(m / "d", m / "moved")
    fsync_mount(m)
    assert os.lstat(m / "moved/h").st_ino == ino
    write(m / "a", "new")
    assert rd(m / "moved/h") == b"new"
    seen = H.view(m)
    fsync_mount(m)
    assert os.lstat(upper / "moved/h").st_ino == os.lstat(upper / "a").st_ino
    mount.unmount(m)
    kernel_reads_like([low], upper, tmp_path, seen)


@pytest.fixture
def three_names(lowers, tmp_path):
    """A lower file with three names in three directories: which one the
    mount finds first is the one a test looks up first."""
    (low,) = lowers(1)
    write(low / "d1/a", "old")
    mkdir(low / "d2")
    mkdir(low / "d3")
    os.link(low / "d1/a", low / "d2/h")
    os.link(low / "d1/a", low / "d3/k")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return low, upper, work


@pytest.mark.parametrize("first", [None, "d1/a"])
@pytest.mark.parametrize("how", ["unlink", "rename over", "rename away"])
def test_removing_one_name_of_a_lower_hard_link_writes_that_alone(mount, three_names,
                                                                   first, how):
    """rm of one name, a rename over it or a rename of it change nothing
    the other names show but the link count (which kernel overlayfs does
    not keep either): DIR gets those names' change alone, as from kernel
    overlayfs, not a copy of the file under the name the mount found first
    (FIRST, looked up before) nor under every other name (podman diff and
    commit would list them all)."""
    low, upper, work = three_names
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    if first:
        os.lstat(m / first)
    written = [".", "d2", "d2/h"]
    if how == "unlink":
        os.unlink(m / "d2/h")
    elif how == "rename over":
        write(m / "d2/new", "replacement")
        os.rename(m / "d2/new", m / "d2/h")
    else:
        os.rename(m / "d2/h", m / "d2/moved")
        written = [".", "d2", "d2/h", "d2/moved"]
    nlink = 3 if how == "rename away" else 2
    assert os.lstat(m / "d1/a").st_nlink == nlink and rd(m / "d3/k") == b"old"
    mount.unmount(m)
    assert [r["path"] for r in H.tree_records(upper)] == written
    st = os.lstat(upper / "d2/h")
    if how == "rename over":
        assert rd(upper / "d2/h") == b"replacement" and st.st_nlink == 1
    else:
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    if how == "rename away":
        assert rd(upper / "d2/moved") == b"old"
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    assert rd(m / "d1/a") == rd(m / "d3/k") == b"old"
    mount.unmount(m)


def test_lower_hard_link_changed_after_a_pass_moved_its_origin(mount, three_names, tmp_path):
    """A link added (no change to what the names show) is written, and the
    file's origin is then its copy in DIR; changed after that, its other
    lower names are still found, in the lower layer."""
    low, upper, work = three_names
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    os.link(m / "d1/a", m / "d1/new")
    fsync_mount(m)
    write(m / "d1/new", "new")
    fsync_mount(m)
    seen = H.view(m)
    m = remount(mount, m, low, upper, work)
    names = ("d1/a", "d1/new", "d2/h", "d3/k")
    assert all(rd(m / p) == b"new" for p in names)
    mount.unmount(m)
    assert len({os.lstat(upper / p).st_ino for p in names}) == 1
    kernel_reads_like([low], upper, tmp_path, seen)


def test_upperdir_hard_link_written_through_one_name(mount, lowers, tmp_path):
    """Hard links already in the upper directory (from a pass before, or
    from kernel overlayfs) are layer 0 of the next mount: written through
    one name after a remount, the other names follow."""
    (low,) = lowers(1)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    mkdir(upper / "d")
    write(upper / "a", "old")
    os.link(upper / "a", upper / "d/h")
    os.link(upper / "a", upper / "c")
    m = mount([low], opts(upper, work, "writeback_delay=off"))
    assert rd(m / "a") == b"old"
    write(m / "d/h", "new")
    seen = H.view(m)
    m = remount(mount, m, low, upper, work)
    assert rd(m / "a") == rd(m / "c") == rd(m / "d/h") == b"new"
    mount.unmount(m)
    assert len({os.lstat(upper / p).st_ino for p in ("a", "c", "d/h")}) == 1
    kernel_reads_like([low], upper, tmp_path, seen)


def test_memoverlay_reads_an_upperdir_kernel_overlayfs_made(mount, layers, tmp_path):
    lay, upper, work = layers
    mp = tmp_path / "kmnt0"
    mp.mkdir()
    lo = ":".join(os.fspath(p) for p in lay)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lo},upperdir={upper},workdir={work}", mp], check=True)
    try:
        change(mp)
        want = H.view(mp)
    finally:
        subprocess.run(["umount", mp], check=True)
    m = mount(lay, opts(upper, work))
    got = H.view(m)
    assert files_only_mtimes(got) == files_only_mtimes(want), \
        H.view_diff(files_only_mtimes(want), files_only_mtimes(got))
    mount.unmount(m)


def kill9(mount, m):
    for pid in m.pids:
        os.kill(pid, signal.SIGKILL)
    H.wait_pids_gone(m.pids, 10)
    subprocess.run(["umount", "-l", m.path], capture_output=True)
    m.done = True
    if m.timer:
        m.timer.cancel()


def test_fsync_survives_kill_9(mount, layers):
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    write(m / "synced", "durable")
    fd = os.open(m / "synced", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    kill9(mount, m)
    assert rd(upper / "synced") == b"durable"


def test_sigterm_writes_back(mount, layers):
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    write(m / "late", "written at SIGTERM")
    os.unlink(m / "gone")
    for pid in m.pids:
        os.kill(pid, signal.SIGTERM)
    assert not H.wait_pids_gone(m.pids, 20)
    mount.unmount(m)
    assert rd(upper / "late") == b"written at SIGTERM"
    assert stat.S_ISCHR(os.lstat(upper / "gone").st_mode)


def test_volatile_skips_syncs_and_writes_at_unmount(mount, layers):
    lay, upper, work = layers
    before = H.tree_records(upper)
    m = mount(lay, opts(upper, work, "volatile,writeback_delay=off"))
    write(m / "v", "volatile")
    fd = os.open(m / "v", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    kill9(mount, m)
    assert H.tree_records(upper) == before

    m = mount(lay, opts(upper, work, "volatile"))
    write(m / "v", "volatile")
    mount.unmount(m)
    assert rd(upper / "v") == b"volatile"


def test_without_upperdir_nothing_is_written(mount, layers):
    lay, upper, work = layers
    m = mount(lay)
    write(m / "x", "x")
    mount.unmount(m)
    assert os.listdir(upper) == [] and os.listdir(work) == []


def test_read_only_mount_changes_nothing_on_disk(mount, layers):
    """ro with upperdir=: DIR is read as the top layer, and neither DIR nor
    WORKDIR is touched, at mount or at unmount."""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    change(m)
    mount.unmount(m)
    work = mkdir(work.parent / "work_ro")  # not even WORKDIR/work is made
    before = (H.tree_records(upper), H.tree_records(work))
    m = mount(lay, opts(upper, work, "ro"))
    assert rd(m / "new") == b"new file"
    assert not os.path.exists(m / "gone")
    assert H.errno_of(write, m / "x", "x") == errno.EROFS
    assert H.errno_of(os.unlink, m / "new") == errno.EROFS
    mount.unmount(m)
    assert (H.tree_records(upper), H.tree_records(work)) == before


@pytest.mark.parametrize("bad, says", [
    ("upperdir={u}", "'upperdir' needs 'workdir'"),
    ("workdir={w}", "'workdir' needs 'upperdir'"),
    ("volatile", "'volatile' needs upperdir"),
    ("writeback_delay=50", "'writeback_delay' needs upperdir"),
    ("upperdir={u},workdir={w},writeback_delay=soon", "bad writeback_delay"),
    ("upperdir={u},workdir={w},writeback_delay=-1", "bad writeback_delay"),
    ("upperdir={u},workdir={w},writeback_delay=3600001", "bad writeback_delay"),
    ("upperdir={u},workdir={u}/sub", "overlap"),
    ("upperdir={l},workdir={w}", "overlaps a lowerdir"),
])
def test_bad_upperdir_options_are_one_line(mount, layers, bad, says):
    lay, upper, work = layers
    (upper / "sub").mkdir()
    (mount.tmp / "nomnt").mkdir()
    r = mount.run([mount.tmp / "nomnt", "-o",
                   f"lowerdir={lay[0]}:{lay[1]}," + bad.format(u=upper, w=work, l=lay[0])])
    assert r.returncode != 0
    assert says in r.stderr and r.stderr.count("\n") == 1, r.stderr


# ---- the write-back while the mount is idle (writeback_idle.c) ----


def kernel_reads_like(lay, upper, tmp_path, seen):
    k = kernel_view(lay, upper, tmp_path)
    no_times = {p: {f: x for f, x in e.items() if f != "mtime"} for p, e in seen.items()}
    assert k == no_times, H.view_diff(no_times, k)


def idle_pass_done(m, upper, last):
    """Waits until the idle pass has put LAST into DIR, then until the
    pass has ended: a lookup of a name never seen needs the namespace lock
    the pass holds to its end."""
    assert H.wait_for(lambda: os.path.lexists(upper / last), H.DEADLINE), \
        f"no idle write-back of {last}"
    assert not os.path.exists(m / f"never-looked-up-{time.monotonic_ns()}")


def test_idle_mount_writes_back_without_unmount(mount, layers, tmp_path):
    """Every kind of change reaches DIR once the mount is quiet, with the
    mount still up and no fsync: then a kill -9 loses nothing, and the
    unmount after it writes nothing at all — an engine deleting the
    container right after its unmount finds DIR and WORK/work still."""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work, "writeback_delay=50"))
    change(m)
    seen = H.view(m)
    idle_pass_done(m, upper, "deep/a/b/c")
    records = H.tree_records(upper), H.tree_records(work)
    mount.unmount(m)
    assert (H.tree_records(upper), H.tree_records(work)) == records, \
        "the unmount wrote again what the idle pass had written"
    kernel_reads_like(lay, upper, tmp_path, seen)


def test_idle_write_back_survives_kill_9(mount, layers, tmp_path):
    lay, upper, work = layers
    m = mount(lay, opts(upper, work, "writeback_delay=50"))
    change(m)
    seen = H.view(m)
    idle_pass_done(m, upper, "deep/a/b/c")
    kill9(mount, m)
    kernel_reads_like(lay, upper, tmp_path, seen)


def test_no_idle_write_back_while_a_file_is_open_for_writing(mount, layers):
    """A writer's data may still be in the kernel's write cache, and a big
    file should not be copied at every pause of its writer: nothing is
    written while any file is open for writing; its close lets the pass
    run. (Ten times the delay without a pass, then one.)"""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work, "writeback_delay=50"))
    with open(m / "log", "w") as f:
        f.write("first\n")
        f.flush()
        write(m / "other", "other")
        time.sleep(0.5)
        assert not os.path.exists(upper / "log") and not os.path.exists(upper / "other")
        f.write("second\n")
    assert H.wait_for(lambda: os.path.exists(upper / "other"), H.DEADLINE)
    assert rd(upper / "log") == b"first\nsecond\n"
    mount.unmount(m)


def test_writeback_delay_off_writes_at_unmount_only(mount, layers):
    lay, upper, work = layers
    before = H.tree_records(upper)
    m = mount(lay, opts(upper, work, "writeback_delay=off"))
    write(m / "new", "new")
    time.sleep(0.5)     # five times the default delay
    assert H.tree_records(upper) == before
    mount.unmount(m)
    assert rd(upper / "new") == b"new"


# ---- a plain user (fusermount3): the setup fixture of conftest.py ----


def test_plain_user_writes_back_and_reads_it_again(setup):
    s = setup
    up, wk = mkdir(s.d / "upper"), mkdir(s.d / "work")
    for p in (up, wk):
        os.chown(p, s.user.uid, s.user.gid)
    o = f"upperdir={up},workdir={wk}"
    m = s.mnt
    listing = f"cd {m} && find . -printf '%p %y %m %s\\n' | sort && cat new dir/data"
    s.mount(o)
    s.sh(f"""
        echo new > {m}/new
        echo appended >> {m}/dir/data
        rm {m}/dir/doomed
        mkdir {m}/dir/sub/newdir; echo x > {m}/dir/sub/newdir/f
        mv {m}/dir {m}/dir2; mkdir {m}/dir; echo again > {m}/dir/data
        chmod 600 {m}/hello
        echo ro > {m}/readonly; chmod 444 {m}/readonly
        mkdir {m}/closed; chmod 500 {m}/closed
        ln -s hello {m}/link
    """)
    seen = s.sh(listing).stdout
    pids = s.pids()
    s.sh(f"fusermount3 -u {m}")
    assert not H.wait_pids_gone(pids, H.DEADLINE)
    # the daemon could not chown: owner and mode of what it wrote are in
    # the override xattr containers/storage and fuse-overlayfs read
    assert os.getxattr(up, "user.containers.override_stat")
    assert os.getxattr(up / "readonly", "user.containers.override_stat") == \
        f"{s.user.uid}:{s.user.gid}:0444".encode()
    assert stat.S_IMODE(os.lstat(up / "closed").st_mode) == 0o700
    # a renamed lower directory is a whole copy; a new one over a lower
    # one is opaque: user.overlay.opaque (no trusted.* for a plain user)
    # and the .wh..wh..opq file fuse-overlayfs also reads
    assert sorted(os.listdir(up / "dir2")) == ["data", "sub"]
    assert os.getxattr(up / "dir", "user.overlay.opaque") == b"y"
    assert os.path.exists(up / "dir" / ".wh..wh..opq")
    s.mount(o)
    again = s.sh(listing).stdout
    pids = s.pids()
    s.sh(f"fusermount3 -u {m}")
    assert not H.wait_pids_gone(pids, H.DEADLINE)
    assert again == seen
    s.check_lower()
    s.check_san()


def test_second_mount_renames_what_the_first_wrote(mount, layers, tmp_path):
    """Mount, write, unmount, and mount again at once (as engines do between
    run, stop, cp and commit): the new mount waits for the last write-back
    (a lock on WORKDIR/work), then renames directories that live in the
    upper directory and in a lower layer; kernel overlayfs agrees."""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    mkdir(m / "d/sub")
    write(m / "d/sub/f", "1\n")
    write(m / "d/g", "g")
    os.link(m / "d/g", m / "d/g2")
    write(m / "ldir/uf", "u")
    m.done = True                      # unmounted below without waiting
    m.timer and m.timer.cancel()
    subprocess.run(["umount", m.path], check=True)
    m2 = mount(lay, opts(upper, work))
    os.rename(m2 / "d", m2 / "e")
    os.rename(m2 / "ldir", m2 / "ldir2")
    with open(m2 / "e/sub/f", "a") as f:
        f.write("2\n")
    seen = H.view(m2, mtimes=False)
    mount.unmount(m2)
    assert kernel_view(lay, upper, tmp_path) == seen
    m3 = mount(lay, opts(upper, work))
    assert H.view(m3, mtimes=False) == seen
    assert os.stat(m3 / "e/g").st_ino == os.stat(m3 / "e/g2").st_ino
    mount.unmount(m3)
    assert not os.path.lexists(upper / "d") and stat.S_ISCHR(os.lstat(upper / "ldir").st_mode)


def test_uidmapping_as_fuse_overlayfs(mount, lowers, tmp_path):
    """uidmapping=/gidmapping= exactly as containers/storage passes them
    for a container with --uidmap (leading colon): a layer owned by the
    container's ids shows them as the host ids of its user namespace, and
    the upper directory gets the container's ids back -- what
    fuse-overlayfs, given the same options, shows and writes."""
    fo = shutil.which("fuse-overlayfs")
    if not fo:
        pytest.skip("fuse-overlayfs not installed")
    low, = lowers(1)
    for name, owner in (("root_file", 0), ("user5", 5), ("outside", 70000)):
        write(low / name, name)
        os.lchown(low / name, owner, owner)
    mkdir(low / "dir")
    idopts = "uidmapping=:0:100000:65536,gidmapping=:0:100000:65536"

    def session(mp, upper, work, start):
        start(f"lowerdir={low},upperdir={upper},workdir={work},{idopts}", mp)
        shown = {n: (os.lstat(mp / n).st_uid, os.lstat(mp / n).st_gid)
                 for n in ("root_file", "user5", "outside", "dir")}
        write(mp / "dir/new", "n")
        os.chown(mp / "dir/new", 100007, 100008)
        os.chown(mp / "user5", 100009, 100009)
        os.chmod(mp / "root_file", 0o600)            # copy-up, owner unchanged
        return shown

    def on_disk(upper):
        return {str(p.relative_to(upper)): (os.lstat(p).st_uid, os.lstat(p).st_gid)
                for p in sorted(upper.rglob("*"))}

    results = []
    for name in ("fuse-overlayfs", "memoverlay"):
        upper, work = mkdir(tmp_path / f"{name}-upper"), mkdir(tmp_path / f"{name}-work")
        if name == "memoverlay":
            m = {}

            def start(o, mp):
                m["m"] = mount([low], o.split(",", 1)[1], mountpoint=mp)
            shown = session(mkdir(tmp_path / f"{name}-mnt"), upper, work, start)
            mount.unmount(m["m"])
        else:
            mp = mkdir(tmp_path / f"{name}-mnt")

            def start(o, mp):
                subprocess.run([fo, "-o", o, mp], check=True, timeout=H.DEADLINE)
            try:
                shown = session(mp, upper, work, start)
            finally:
                H.unmount(mp)
        results.append((name, shown, on_disk(upper)))
    (_, fo_shown, fo_disk), (_, mo_shown, mo_disk) = results
    assert mo_shown == fo_shown == {"root_file": (100000, 100000), "user5": (100005, 100005),
                                    "outside": (65534, 65534), "dir": (100000, 100000)}
    assert mo_disk == fo_disk, f"upper on disk: fuse-overlayfs {fo_disk}, memoverlay {mo_disk}"
    assert mo_disk["dir/new"] == (7, 8) and mo_disk["user5"] == (9, 9)


@pytest.mark.parametrize("extra", [[], ["-o", "index=off", "-o", "userxattr"]],
                         ids=["containerd", "index=off,userxattr"])
def test_containerd_argv_through_mount_fuse3(mount, layers, tmp_path, extra):
    """The argv containerd 1.6 builds for a FUSE overlay, one -o per
    option, through mount.fuse3 (and its index=off and userxattr words):
    mounted, written back to the upper directory at unmount."""
    lay, upper, work = layers
    mp = mkdir(tmp_path / "target")
    helper = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
    m = mount(lay, mountpoint=mp,
              env_extra={"PATH": f"{mount.build.exe.parent}:{os.environ.get('PATH', '/usr/bin')}"},
              argv=[helper, "overlay", str(mp), "-o", f"workdir={work}", "-o", f"upperdir={upper}",
                    "-o", f"lowerdir={lay[0]}:{lay[1]}", *extra, "-t", "memoverlay",
                    *(["-o", mount.build.opts] if mount.build.opts else [])])
    write(m / "new", "n")
    os.unlink(m / "gone")
    subprocess.run(["rm", "-rf", m / "rmdir"], check=True)
    mkdir(m / "rmdir")
    mount.unmount(m)
    assert rd(upper / "new") == b"n"
    assert stat.S_ISCHR(os.lstat(upper / "gone").st_mode)
    opaque = "user.overlay.opaque" if extra else "trusted.overlay.opaque"
    assert os.getxattr(upper / "rmdir", opaque) == b"y"


def test_read_only_mount_changes_no_directory(mount, layers):
    """ro with upperdir=: the upper directory, like the lower ones (the
    fixture checks those), is read and never written, not even at unmount."""
    lay, upper, work = layers
    m = mount(lay, opts(upper, work))
    change(m)
    mount.unmount(m)
    before = H.tree_records(upper)
    m = mount(lay, opts(upper, work, "ro"))
    seen = H.view(m, mtimes=False)
    H.contents(m)
    assert H.errno_of(write, m / "x", "x") == errno.EROFS
    fd = os.open(m / "new", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    mount.unmount(m)
    assert H.tree_records(upper) == before, "\n".join(H.tree_diff(before, H.tree_records(upper)))
    m = mount(lay, opts(upper, work))
    assert H.view(m, mtimes=False) == seen

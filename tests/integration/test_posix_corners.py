"""POSIX corners where memoverlay must answer as tmpfs (and kernel overlayfs
with a tmpfs upper) do: the link count of an open directory whose name is
gone, S_ISGID after an ACL write by an owner outside the file's group, and
what a lower hard link that loses its last name through rename leaves
behind. Each test mounts, does what a user does, checks what a user sees."""

import os
import shutil
import stat
import subprocess

import pytest

import helpers as H

# The write side needs the daemon: the 'kernel' reference build is read-only.
pytestmark = pytest.mark.memoverlay_only


# ------------------------------------------- rename onto a lower hard link


def drop_dentries():
    """Has the kernel drop unused dentries and inodes (not the page cache):
    it then forgets them, as it would under memory pressure."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    except OSError:
        pytest.skip("needs root to drop the dentry cache")


def test_rename_onto_last_name_of_lower_hardlink_lets_it_go(mount, lowers):
    """A lower file with two hard links, both replaced by rename: once the
    kernel forgets it, nothing may keep the daemon's copy of it alive.

    The copy is observable only where the same lower inode has a third name
    the link count does not know of: two layers that overlap (the top layer
    is a directory of the bottom one), so the inode behind A and B is also
    SUB/A. After A and B are renamed over, the copy has no link left; kept
    alive, it is what a lookup of SUB/A finds (link count 0), instead of
    the lower file again (link count 2)."""
    (base,) = lowers(1)
    H.write(base / "sub" / "a", b"lower data")
    os.link(base / "sub" / "a", base / "sub" / "b")
    m = mount([base / "sub", base])
    assert os.stat(m / "a").st_ino == os.stat(m / "b").st_ino

    H.write(m / "x", b"x")
    H.write(m / "y", b"y")
    os.rename(m / "x", m / "a")   # copies a up: one link of two left
    os.rename(m / "y", m / "b")   # the last one
    assert os.stat(m / "a").st_nlink == 1 and os.stat(m / "b").st_nlink == 1

    # The kernel forgets the old inode on its own time (FORGET is
    # asynchronous); dropping the dentry cache makes it forget whatever a
    # failed look at sub/a took again.
    def lower_file_again():
        drop_dentries()
        return os.stat(m / "sub" / "a").st_nlink == 2
    assert H.wait_for(lower_file_again, H.DEADLINE), (
        "sub/a still shows the renamed-over copy (link count "
        f"{os.stat(m / 'sub' / 'a').st_nlink}): it stayed pinned")
    with open(m / "sub" / "a", "rb") as f:
        assert f.read() == b"lower data"


# ------------------------------------- an open directory whose name is gone


def open_dir(p):
    return os.open(p, os.O_RDONLY | os.O_DIRECTORY)


@pytest.mark.parametrize("opts", ["", "nowriteback"])
def test_open_directory_replaced_by_rename_has_no_links(mount, lowers, opts):
    """mkdir d1 d2; open d2; rename(d1, d2): the open d2 is gone, and fstat
    says so with link count 0, as for an open file that lost its last name
    (tmpfs and kernel overlayfs: 0)."""
    (lo,) = lowers(1)
    m = mount([lo], opts)
    os.mkdir(m / "p")
    os.mkdir(m / "p" / "d1")
    os.mkdir(m / "p" / "d2")
    assert os.stat(m / "p").st_nlink == 4
    fd = open_dir(m / "p" / "d2")
    try:
        os.rename(m / "p" / "d1", m / "p" / "d2")
        st = os.fstat(fd)
        assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 0
    finally:
        os.close(fd)
    assert os.stat(m / "p" / "d2").st_nlink == 2   # the one renamed there
    assert os.stat(m / "p").st_nlink == 3
    assert sorted(os.listdir(m / "p")) == ["d2"]


@pytest.mark.parametrize("opts", ["", "nowriteback"])
def test_open_directory_removed_has_no_links(mount, lowers, opts):
    """mkdir d; open d; rmdir d: fstat on the open d says link count 0."""
    (lo,) = lowers(1)
    m = mount([lo], opts)
    os.mkdir(m / "p")
    os.mkdir(m / "p" / "d")
    fd = open_dir(m / "p" / "d")
    try:
        os.rmdir(m / "p" / "d")
        assert os.fstat(fd).st_nlink == 0
        assert H.errno_of(os.mkdir, f"/proc/self/fd/{fd}/x") == 2   # ENOENT: it is dead
    finally:
        os.close(fd)
    assert os.stat(m / "p").st_nlink == 2


def test_open_lower_directories_whose_name_goes_have_no_links(mount, lowers):
    """The same for directories of the lower layer: one only in the lower
    layer (rmdir), one copied up (chmod, then rmdir), one merged from two
    layers, one replaced by rename. (Kernel overlayfs shows the lower's or
    the merged count there, as it shows a stale count for an open lower file
    that was unlinked; memoverlay answers as tmpfs, for both.)"""
    top, bottom = lowers(2)
    for d in ("lone", "copied", "target"):
        H.mkdir(top / d)
    H.mkdir(top / "merged")
    H.mkdir(bottom / "merged")
    H.mkdir(bottom / "src")
    m = mount([top, bottom])
    os.chmod(m / "copied", 0o700)
    fds = {d: open_dir(m / d) for d in ("lone", "copied", "merged", "target")}
    try:
        for d in ("lone", "copied", "merged"):
            assert os.fstat(fds[d]).st_nlink > 0
            os.rmdir(m / d)
        os.rename(m / "src", m / "target")
        got = {d: os.fstat(fd).st_nlink for d, fd in fds.items()}
        assert got == {"lone": 0, "copied": 0, "merged": 0, "target": 0}
    finally:
        for fd in fds.values():
            os.close(fd)
    assert sorted(os.listdir(m)) == ["target"]
    assert os.stat(m / "target").st_nlink > 0


# ------------------------------------------ S_ISGID after an ACL write


def as_ids(m, cmd, uid, gid, groups=()):
    """Runs CMD as UID with primary group GID and supplementary GROUPS only;
    "M/" in its arguments is the mount root, reached through an inherited fd
    (pytest's temp dirs are not traversable for other users)."""
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cmd = [a.replace("M/", f"/proc/self/fd/{fd}/") for a in cmd]
        ids = ["setpriv", f"--reuid={uid}", f"--regid={gid}"]
        ids += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        return subprocess.run(ids + cmd, capture_output=True, text=True, timeout=H.DEADLINE,
                              pass_fds=(fd,))
    finally:
        os.close(fd)


def need_setfacl():
    if not shutil.which("setfacl") or not shutil.which("setpriv"):
        pytest.skip("needs setfacl and setpriv")


# (who runs setfacl: uid, primary gid, supplementary groups), and whether the
# set-group-ID bit of a file of group 100 stays — as tmpfs decides.
WRITERS = [
    ("outsider", (100, 101, ()), False),
    ("supplementary-member", (100, 101, (100,)), True),
    ("primary-member", (100, 100, ()), True),
]


@pytest.mark.parametrize("opts", ["", "nowriteback"])
@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("writer", WRITERS, ids=[w[0] for w in WRITERS])
def test_acl_write_by_owner_outside_group_clears_setgid(mount, lowers, writer, kind, opts):
    """As root: touch t; chown 100:100 t; chmod 2755 t. As uid 100: setfacl
    -m u::rwx,g::rwx,o::rwx t. Outside group 100 (and without CAP_FSETID)
    the write clears S_ISGID, as chmod would; in the group it stays."""
    need_setfacl()
    _, (uid, gid, groups), keeps = writer
    (lo,) = lowers(1)
    m = mount([lo], opts)
    p = m / "t"
    if kind == "dir":
        os.mkdir(p)
    else:
        H.write(p)
    os.chown(p, 100, 100)
    os.chmod(p, 0o2755)
    r = as_ids(m, ["setfacl", "-m", "u::rwx,g::rwx,o::rwx", "M/t"], uid, gid, groups)
    assert r.returncode == 0, r.stderr
    want = 0o2777 if keeps else 0o777
    assert oct(stat.S_IMODE(os.stat(p).st_mode)) == oct(want)

    # An ACL that says more than the mode (a named user, a mask) alike.
    os.chmod(p, 0o2755)
    r = as_ids(m, ["setfacl", "-m", "u:5:r-x", "M/t"], uid, gid, groups)
    assert r.returncode == 0, r.stderr
    assert bool(os.stat(p).st_mode & stat.S_ISGID) == keeps
    assert "user:5:r-x" in as_ids(m, ["getfacl", "-cn", "M/t"], 0, 0).stdout

    # root has CAP_FSETID: the bit stays whatever the group.
    os.chown(p, 100, 101)
    os.chmod(p, 0o2755)
    r = subprocess.run(["setfacl", "-m", "u::rwx,g::rwx,o::rwx", p], capture_output=True,
                       text=True, timeout=H.DEADLINE)
    assert r.returncode == 0, r.stderr
    assert os.stat(p).st_mode & stat.S_ISGID


def test_acl_write_on_lower_file_by_owner_outside_group_clears_setgid(mount, lowers):
    """The same for a file of the lower layer: the write copies it up and
    clears the bit there; the lower file keeps it."""
    need_setfacl()
    (lo,) = lowers(1)
    H.write(lo / "t", b"lower", mode=0o2755)
    os.chown(lo / "t", 100, 100)
    os.chmod(lo / "t", 0o2755)
    m = mount([lo])
    r = as_ids(m, ["setfacl", "-m", "u::rwx,g::rwx,o::rwx", "M/t"], 100, 101)
    assert r.returncode == 0, r.stderr
    assert stat.filemode(os.stat(m / "t").st_mode) == "-rwxrwxrwx"
    assert stat.S_IMODE(os.stat(lo / "t").st_mode) == 0o2755

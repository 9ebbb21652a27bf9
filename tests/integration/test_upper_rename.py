"""Write side (issue 6): rename, RENAME_NOREPLACE and RENAME_EXCHANGE of files
and of directories that live (partly or only) in lower layers. Never EXDEV."""

import errno
import os
import stat
import subprocess

import pytest

import helpers as H
from helpers import write, mkdir, symlink, rd

# The write side needs the daemon: the 'kernel' reference build is read-only.
pytestmark = pytest.mark.memoverlay_only


@pytest.fixture
def two(lowers):
    top, bot = lowers(2)
    write(bot / "f1", "bot-f1")
    write(bot / "f2", "bot-f2")
    write(bot / "ldir/x", "x")
    write(bot / "ldir/deep/y", "y")
    symlink(bot / "ldir/ln", "x")
    write(bot / "ldir2/z", "z")
    mkdir(bot / "lempty")
    write(bot / "merged/from_bot", "mb")
    write(top / "merged/from_top", "mt")
    write(top / "t1", "top-t1")
    mkdir(top / "dst")
    return top, bot


def never_exdev(fn, *a):
    try:
        fn(*a)
    except OSError as e:
        assert e.errno != errno.EXDEV, f"EXDEV from {fn.__name__}{a}"
        raise


def test_rename_files(mount, two):
    m = mount(list(two))
    ino = os.stat(m / "f1").st_ino
    never_exdev(os.rename, m / "f1", m / "g1")
    assert not os.path.exists(m / "f1")
    assert rd(m / "g1") == b"bot-f1"
    assert os.stat(m / "g1").st_ino == ino, "rename changed st_ino"
    assert "f1" not in os.listdir(m) and "g1" in os.listdir(m)
    # across directories, into a lower-only dir
    never_exdev(os.rename, m / "g1", m / "ldir/deep/g1")
    assert rd(m / "ldir/deep/g1") == b"bot-f1"
    # over an existing lower file (replace)
    never_exdev(os.rename, m / "t1", m / "f2")
    assert rd(m / "f2") == b"top-t1"
    assert "t1" not in os.listdir(m)
    # new upper file onto lower name and back
    write(m / "new", "new")
    os.rename(m / "new", m / "ldir/x")
    assert rd(m / "ldir/x") == b"new"
    os.rename(m / "ldir/x", m / "back")
    assert not os.path.exists(m / "ldir/x"), "lower x came back after renaming its replacement away"
    # a symlink from a lower dir
    os.rename(m / "ldir/ln", m / "ln2")
    assert os.readlink(m / "ln2") == "x"
    # the old name can be re-created
    write(m / "f1", "again")
    assert rd(m / "f1") == b"again"
    # rename to itself is a no-op
    os.rename(m / "f1", m / "f1")
    assert rd(m / "f1") == b"again"
    # mv(1)
    r = subprocess.run(["mv", str(m / "f1"), str(m / "dst/")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "cross-device" not in r.stderr, r.stderr
    assert rd(m / "dst/f1") == b"again"


def test_rename_hardlinks_same_inode(mount, two):
    m = mount(list(two))
    write(m / "a", "a")
    os.link(m / "a", m / "b")
    os.rename(m / "a", m / "b")   # same inode: nothing happens, both names stay
    assert os.path.exists(m / "a") and os.path.exists(m / "b")
    assert os.stat(m / "a").st_nlink == 2


def test_rename_noreplace(mount, two):
    m = mount(list(two))
    assert H.errno_of(H.renameat2, m / "t1", m / "f1", H.RENAME_NOREPLACE) == errno.EEXIST
    assert H.errno_of(H.renameat2, m / "f1", m / "ldir", H.RENAME_NOREPLACE) == errno.EEXIST
    assert H.errno_of(H.renameat2, m / "ldir", m / "merged", H.RENAME_NOREPLACE) == errno.EEXIST
    assert rd(m / "f1") == b"bot-f1" and rd(m / "t1") == b"top-t1"
    H.renameat2(m / "f1", m / "nf1", H.RENAME_NOREPLACE)
    assert rd(m / "nf1") == b"bot-f1" and not os.path.exists(m / "f1")
    # NOREPLACE onto a whiteout (deleted lower name) succeeds
    os.unlink(m / "f2")
    H.renameat2(m / "nf1", m / "f2", H.RENAME_NOREPLACE)
    assert rd(m / "f2") == b"bot-f1"
    H.renameat2(m / "ldir", m / "ldir-moved", H.RENAME_NOREPLACE)
    assert sorted(os.listdir(m / "ldir-moved")) == ["deep", "ln", "x"]


def test_rename_exchange_files(mount, two):
    m = mount(list(two))
    i1, it = os.stat(m / "f1").st_ino, os.stat(m / "t1").st_ino
    never_exdev(H.renameat2, m / "f1", m / "t1", H.RENAME_EXCHANGE)   # lower <-> upper
    assert rd(m / "f1") == b"top-t1" and rd(m / "t1") == b"bot-f1"
    assert os.stat(m / "t1").st_ino == i1 and os.stat(m / "f1").st_ino == it
    never_exdev(H.renameat2, m / "f2", m / "ldir/x", H.RENAME_EXCHANGE)  # lower <-> lower
    assert rd(m / "f2") == b"x" and rd(m / "ldir/x") == b"bot-f2"
    # file <-> directory
    never_exdev(H.renameat2, m / "f2", m / "ldir2", H.RENAME_EXCHANGE)
    assert os.path.isdir(m / "f2") and os.listdir(m / "f2") == ["z"]
    assert rd(m / "ldir2") == b"x"
    # exchange with a missing name
    assert H.errno_of(H.renameat2, m / "f1", m / "nope", H.RENAME_EXCHANGE) == errno.ENOENT
    assert H.errno_of(H.renameat2, m / "f1", m / "t1",
                      H.RENAME_EXCHANGE | H.RENAME_NOREPLACE) == errno.EINVAL


def test_rename_lower_dirs(mount, two):
    m = mount(list(two))
    ino = os.stat(m / "ldir").st_ino
    never_exdev(os.rename, m / "ldir", m / "dst/moved")
    assert not os.path.exists(m / "ldir")
    assert "ldir" not in os.listdir(m)
    assert os.stat(m / "dst/moved").st_ino == ino
    assert H.contents(m / "dst/moved") == {
        "x": b"x", "deep": ("dir",), "deep/y": b"y", "ln": ("link", "x")}
    # changes inside the moved dir work
    write(m / "dst/moved/deep/new", "n")
    os.unlink(m / "dst/moved/x")
    assert sorted(os.listdir(m / "dst/moved")) == ["deep", "ln"]
    assert sorted(os.listdir(m / "dst/moved/deep")) == ["new", "y"]
    # the old name re-created is empty: lower entries must not come back
    os.mkdir(m / "ldir")
    assert os.listdir(m / "ldir") == []
    # rename back over the new empty dir (replaces an empty dir)
    os.rename(m / "dst/moved", m / "ldir")
    assert sorted(os.listdir(m / "ldir")) == ["deep", "ln"]
    # a merged dir (upper + lower parts)
    never_exdev(os.rename, m / "merged", m / "merged2")
    assert sorted(os.listdir(m / "merged2")) == ["from_bot", "from_top"]
    assert not os.path.exists(m / "merged")
    # and a second rename of the same dir, and then into a lower-only dir
    os.rename(m / "merged2", m / "ldir2/merged3")
    assert sorted(os.listdir(m / "ldir2/merged3")) == ["from_bot", "from_top"]
    assert rd(m / "ldir2/merged3/from_bot") == b"mb"
    # a lower empty dir onto an upper empty dir
    os.rename(m / "lempty", m / "dst")
    assert os.listdir(m / "dst") == []
    assert not os.path.exists(m / "lempty")


def test_rename_dir_errors(mount, two):
    m = mount(list(two))
    E = H.errno_of
    assert E(os.rename, m / "ldir", m / "ldir2") == errno.ENOTEMPTY   # target non-empty in lower
    assert E(os.rename, m / "dst", m / "ldir2") == errno.ENOTEMPTY
    assert E(os.rename, m / "ldir", m / "f1") == errno.ENOTDIR
    assert E(os.rename, m / "f1", m / "ldir") == errno.EISDIR
    assert E(os.rename, m / "f1", m / "lempty") == errno.EISDIR
    assert E(os.rename, m / "ldir", m / "ldir/deep/in") == errno.EINVAL
    assert E(os.rename, m / "missing", m / "x") == errno.ENOENT
    assert E(os.rename, m / "f1", m / "missing/x") == errno.ENOENT
    assert E(os.rename, m / "f1", m / "f2/x") == errno.ENOTDIR
    # after emptying a lower dir through the mount, it is a valid target
    for n in ("x", "ln"):
        os.unlink(m / "ldir" / n)
    os.unlink(m / "ldir/deep/y")
    os.rmdir(m / "ldir/deep")
    os.rename(m / "ldir2", m / "ldir")
    assert os.listdir(m / "ldir") == ["z"]
    assert "ldir2" not in os.listdir(m)


def test_rename_exchange_dirs(mount, two):
    m = mount(list(two))
    never_exdev(H.renameat2, m / "ldir", m / "ldir2", H.RENAME_EXCHANGE)
    assert os.listdir(m / "ldir") == ["z"]
    assert sorted(os.listdir(m / "ldir2")) == ["deep", "ln", "x"]
    # across directories: a lower dir with a merged dir in another directory
    never_exdev(H.renameat2, m / "ldir2", m / "dst", H.RENAME_EXCHANGE)
    assert os.listdir(m / "ldir2") == []
    assert sorted(os.listdir(m / "dst")) == ["deep", "ln", "x"]
    never_exdev(H.renameat2, m / "dst/deep", m / "merged", H.RENAME_EXCHANGE)
    assert os.listdir(m / "merged") == ["y"]
    assert sorted(os.listdir(m / "dst/deep")) == ["from_bot", "from_top"]
    assert rd(m / "dst/deep/from_bot") == b"mb"
    # exchange a dir with its own child: EINVAL (ancestor loop)
    assert H.errno_of(H.renameat2, m / "dst", m / "dst/deep", H.RENAME_EXCHANGE) == errno.EINVAL


def test_rename_open_files(mount, two):
    m = mount(list(two))
    fd = os.open(m / "f1", os.O_RDWR)
    os.rename(m / "f1", m / "dst/f1")
    os.write(fd, b"XX")
    os.close(fd)
    assert rd(m / "dst/f1") == b"XXt-f1"
    # a file replaced by rename while open keeps its old data
    fd = os.open(m / "f2", os.O_RDONLY)
    os.rename(m / "t1", m / "f2")
    assert os.read(fd, 100) == b"bot-f2"
    os.close(fd)
    assert rd(m / "f2") == b"top-t1"


def test_rename_many_in_lower_dir(mount, lowers):
    (l,) = lowers(1)
    for i in range(300):
        write(l / "d" / f"e{i:03}", str(i))
    m = mount([l])
    for i in range(0, 300, 2):
        os.rename(m / "d" / f"e{i:03}", m / "d" / f"r{i:03}")
    names = os.listdir(m / "d")
    assert len(names) == 300 == len(set(names))
    assert sum(n.startswith("r") for n in names) == 150
    os.rename(m / "d", m / "d2")
    assert len(os.listdir(m / "d2")) == 300
    assert rd(m / "d2/r100") == b"100" and rd(m / "d2/e101") == b"101"

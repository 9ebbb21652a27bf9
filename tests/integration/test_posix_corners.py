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

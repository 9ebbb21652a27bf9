"""Read side: st_ino stable for the life of the mount, unique across layers,
the same in stat and readdir; st_dev the mount's."""

import os
import stat
import subprocess
import time

import pytest

import helpers as H
from helpers import write, mkdir, symlink


def populate(layers):
    top, mid, bot = layers
    for i, l in enumerate(layers):
        for j in range(30):
            write(l / f"own{i}_{j}", f"{i}/{j}")
            write(l / "shared" / f"s{j}", f"{i}")         # same names in every layer
            write(l / f"d{j % 5}" / f"f{i}_{j}", "x")     # merged dirs
        symlink(l / f"link{i}", "shared")
        mkdir(l / f"only{i}/deeper")
    f = write(bot / "hl", "hard")
    os.link(f, bot / "hl2")
    os.link(f, bot / "d0/hl3")
    os.mkfifo(mid / "fifo")


def inode_map(root):
    return {rel: st.st_ino for rel, st in H.walk_stats(root).items()}


def check_unique(stats, what):
    """Distinct files have distinct inode numbers (hard links share one)."""
    by_ino = {}
    for rel, st in stats.items():
        by_ino.setdefault(st.st_ino, []).append(rel)
    dups = {ino: rels for ino, rels in by_ino.items()
            if len(rels) > 1 and not all(n.rsplit("/", 1)[-1].startswith("hl") for n in rels)}
    assert not dups, f"{what}: inode numbers shared by different files: {dups}"


def test_inodes_stable_unique_and_in_readdir(mount, lowers, drop_caches):
    layers = lowers(3)
    populate(layers)
    m = mount(layers)
    first = H.walk_stats(m)
    check_unique(first, "mount")
    assert first["hl"].st_ino == first["hl2"].st_ino == first["d0/hl3"].st_ino
    mdev = os.stat(m).st_dev
    lower_devs = {os.stat(l).st_dev for l in layers}
    assert mdev not in lower_devs
    bad = {r: st.st_dev for r, st in first.items() if st.st_dev != mdev}
    assert not bad, f"entries whose st_dev is not the mount's ({mdev}): {bad}"
    # readdir's d_ino == stat's st_ino, for every entry of every directory
    for dirpath, dirnames, filenames in os.walk(m):
        with os.scandir(dirpath) as it:
            for e in it:
                rel = os.path.relpath(e.path, m)
                assert e.inode() == first[rel].st_ino, f"{rel}: readdir {e.inode()} stat {first[rel].st_ino}"
        with H.Dir(dirpath) as d:
            for name, d_ino, d_type in d:
                if name in (".", ".."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), m)
                assert d_ino == first[rel].st_ino, rel
    # stable across cache drops (the kernel forgets, the daemon must not renumber)
    if not drop_caches():
        pytest.skip("cannot write /proc/sys/vm/drop_caches")
    for round_ in range(2):
        drop_caches()
        # Lets the daemon take the FORGETs before the lookups below, so that
        # they usually find nodes it forgot. Not a wait for a result: the
        # numbers must be the same whichever comes first, so on a slow
        # machine the test only covers less, it cannot fail.
        time.sleep(0.2)
        again = inode_map(m)
        changed = {r: (first[r].st_ino, again.get(r)) for r in first if again.get(r) != first[r].st_ino}
        assert not changed, f"inode numbers changed after drop_caches: {changed}"
    # looked up again in another order, directly by path
    drop_caches()
    for rel in sorted(first, reverse=True):
        assert os.lstat(m / rel if rel != "." else m.path).st_ino == first[rel].st_ino, rel
    # `ls -i` (readdir + stat via coreutils) agrees too
    out = subprocess.run(["ls", "-ai1", str(m / "shared")], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split("\n")
    for line in out:
        if not line.strip():
            continue
        ino, name = line.split(None, 1)
        if name in (".", ".."):
            continue
        assert int(ino) == first["shared/" + name].st_ino, line


@pytest.fixture
def colliding_tmpfs(tmp_path_factory):
    """Two fresh tmpfs mounts: files created in the same order get the same
    inode numbers on both."""
    base = tmp_path_factory.mktemp("tmpfs")
    mps = []
    try:
        for n in ("t1", "t2"):
            mp = base / n
            mp.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mp)],
                           check=True, timeout=30, capture_output=True)
            mps.append(mp)
        yield mps
    finally:
        for mp in reversed(mps):
            H.unmount(mp)


@pytest.mark.memoverlay_only  # kernel overlayfs needs xino=on for this
def test_inodes_unique_across_layers_with_colliding_numbers(colliding_tmpfs, mount, drop_caches):
    t1, t2 = colliding_tmpfs
    for t, tag in ((t1, "a"), (t2, "b")):
        mkdir(t / "L")
        for j in range(40):
            write(t / "L" / f"{tag}{j}", tag)
        mkdir(t / "L/common")
        for j in range(40):
            write(t / "L/common" / f"{tag}{j}", tag)
    l1, l2 = t1 / "L", t2 / "L"
    s1 = {e.name[1:]: e.inode() for e in os.scandir(l1) if e.name != "common"}
    s2 = {e.name[1:]: e.inode() for e in os.scandir(l2) if e.name != "common"}
    collisions = sum(1 for k in s1 if s1[k] == s2.get(k))
    if collisions < 10:
        pytest.skip(f"tmpfs did not hand out colliding inode numbers ({collisions})")
    m = mount([l1, l2])
    first = H.walk_stats(m)
    assert len(first) == 1 + 40 + 40 + 1 + 80
    check_unique(first, "mount over two tmpfs layers")
    drop_caches()
    time.sleep(0.2)   # FORGETs first, usually: see test_inodes_stable_unique_and_in_readdir
    again = inode_map(m)
    assert again == {r: st.st_ino for r, st in first.items()}
    mount.unmount(m)  # before the tmpfs layers go away


def test_merged_dir_inode_stable_when_top_dir_looked_up_first(mount, lowers, drop_caches):
    """A directory that exists in several layers is one inode, whichever
    layer's copy of it the kernel happened to ask about first."""
    top, bot = lowers(2)
    write(top / "d/a", "")
    write(bot / "d/b", "")
    write(bot / "e/c", "")
    m = mount([top, bot])
    ino_d = os.stat(m / "d").st_ino
    ino_a = os.stat(m / "d/a").st_ino
    ino_b = os.stat(m / "d/b").st_ino
    drop_caches()
    assert os.stat(m / "d/b").st_ino == ino_b
    assert os.stat(m / "d").st_ino == ino_d
    assert os.stat(m / "d/a").st_ino == ino_a
    assert len({ino_d, ino_a, ino_b, os.stat(m / "e").st_ino, os.stat(m).st_ino}) == 5

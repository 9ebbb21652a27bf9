"""Read side: a directory of 50,000 entries merged from two layers —
complete, no duplicates, stable telldir/seekdir offsets."""

import os
import random
import stat
import subprocess

import pytest

import helpers as H

TOP_RANGE = range(0, 30000)        # names 0..29999 in the top layer
BOT_RANGE = range(20000, 50000)    # names 20000..49999 in the bottom (10k overlap)
TOTAL = 50000


def name(i):
    return f"entry-{i:05d}"


@pytest.fixture(scope="module")
def big_layers(tmp_path_factory):
    base = tmp_path_factory.mktemp("bigdir")
    top, bot = base / "top", base / "bot"
    for layer, rng, tag in ((top, TOP_RANGE, b"t"), (bot, BOT_RANGE, b"b")):
        d = layer / "big"
        d.mkdir(parents=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in rng:
                if i % 1000 == 7:
                    os.mkdir(name(i), dir_fd=fd)
                elif i % 1000 == 8:
                    os.symlink("target", name(i), dir_fd=fd)
                else:
                    f = os.open(name(i), os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                    if i % 100 == 0:
                        os.write(f, tag)
                    os.close(f)
        finally:
            os.close(fd)
    return [top, bot]


def expected_names():
    return {name(i) for i in range(TOTAL)}


def test_bigdir_readdir_complete(mount, big_layers):
    m = mount(big_layers)
    d = m / "big"
    names = H.raw_listdir(d)
    assert names.count(".") == 1 and names.count("..") == 1
    names = [n for n in names if n not in (".", "..")]
    assert len(names) == len(set(names)), f"{len(names) - len(set(names))} duplicate entries"
    missing = expected_names() - set(names)
    extra = set(names) - expected_names()
    assert not missing and not extra, (f"missing {len(missing)} e.g. {sorted(missing)[:5]}, "
                                       f"extra {len(extra)} e.g. {sorted(extra)[:5]}")
    # os.scandir: d_type right, d_ino unique
    inos, types = {}, {}
    with os.scandir(d) as it:
        for e in it:
            inos[e.name] = e.inode()
            types[e.name] = (e.is_dir(follow_symlinks=False), e.is_symlink())
    assert len(inos) == TOTAL
    assert len(set(inos.values())) == TOTAL, "inode numbers not unique in the big dir"
    for i in (7, 8, 20007, 20008, 49007, 49008, 100, 25000, 49999):
        assert types[name(i)] == (i % 1000 == 7, i % 1000 == 8), name(i)
    # shadowing inside the big dir: the top layer wins in the overlap
    assert (d / name(25000)).read_bytes() == b"t"
    assert (d / name(45000)).read_bytes() == b"b"
    # ls -f (unsorted, raw readdir through coreutils) agrees
    out = subprocess.run(["ls", "-f", "-1", str(d)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert len(out) == TOTAL + 2 and len(set(out)) == TOTAL + 2
    # a second listing gives the same set (and, with a stable cursor, the same order)
    again = [n for n in H.raw_listdir(d) if n not in (".", "..")]
    assert sorted(again) == sorted(names)


def test_bigdir_telldir_seekdir(mount, big_layers):
    m = mount(big_layers)
    d = m / "big"
    rng = random.Random(1234)
    with H.Dir(d) as dr:
        seq = []          # (position before the entry, name)
        while True:
            pos = dr.tell()
            e = dr.read()
            if e is None:
                break
            seq.append((pos, e[0]))
        names = [n for _, n in seq]
        assert len(names) == TOTAL + 2 and len(set(names)) == TOTAL + 2
        # jump around: every position yields the entry that was there
        samples = rng.sample(range(len(seq)), 300) + [0, 1, 2, len(seq) - 1]
        for i in samples:
            dr.seek(seq[i][0])
            got = [dr.read() for _ in range(3)]
            want = [n for _, n in seq[i:i + 3]]
            assert [g[0] for g in got if g] == want, f"seekdir to entry {i}"
        # from a position in the middle, reading on gives exactly the rest
        mid = len(seq) // 2
        dr.seek(seq[mid][0])
        rest = [e[0] for e in dr]
        assert rest == names[mid:]
        # rewinddir starts over with the same sequence
        dr.rewind()
        assert [e[0] for e in dr] == names
    # a fresh stream gives the same order (offsets are not per-open)
    with H.Dir(d) as dr2:
        assert [e[0] for e in dr2] == names

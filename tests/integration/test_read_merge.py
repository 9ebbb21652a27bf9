"""Read side: merging several lower layers, whiteouts, opaque directories."""

import errno
import os
import stat
import subprocess

import pytest

import helpers as H
from helpers import write, mkdir, symlink


def build_three_layers(top, mid, bot):
    # bottom
    write(bot / "a.txt", "bot-a")
    write(bot / "b.txt", "bot-b")
    write(bot / "c.txt", "bot-c")
    write(bot / "sub/z", "bot-z")
    write(bot / "sub/x", "bot-x")
    write(bot / "dir1/f2", "bot-f2")
    write(bot / "dir1/nested/n2", "bot-n2")
    write(bot / "only_bot/deep/er/file", "deep")
    mkdir(bot / "fd_dir_under_file")
    write(bot / "fd_dir_under_file/hidden", "must not show")
    # middle
    write(mid / "a.txt", "mid-a")
    write(mid / "b.txt", "mid-b")
    write(mid / "sub/y", "mid-y")
    write(mid / "sub/x", "mid-x")
    mkdir(bot / "dir1", 0o755)
    write(mid / "dir1/f1", "mid-f1")
    write(mid / "dir1/nested/n1", "mid-n1")
    write(mid / "fd_dir_under_file", "file over dir")
    mkdir(mid / "shadowed_dir")
    write(mid / "shadowed_dir/inner", "must not show")
    write(mid / "dir_over_file", "must not show")
    symlink(mid / "link_mid", "a.txt")
    # top
    write(top / "a.txt", "top-a", mode=0o600)
    write(top / "sub/x", "top-x")
    write(top / "only0", "0")
    mkdir(top / "dir1", 0o700)
    write(top / "shadowed_dir", "a file over a lower dir")
    write(top / "dir_over_file/new", "dir wins")
    write(top / "empty", "")


EXPECTED = {
    "a.txt": b"top-a",
    "b.txt": b"mid-b",
    "c.txt": b"bot-c",
    "sub": ("dir",),
    "sub/x": b"top-x",
    "sub/y": b"mid-y",
    "sub/z": b"bot-z",
    "dir1": ("dir",),
    "dir1/f1": b"mid-f1",
    "dir1/f2": b"bot-f2",
    "dir1/nested": ("dir",),
    "dir1/nested/n1": b"mid-n1",
    "dir1/nested/n2": b"bot-n2",
    "only_bot": ("dir",),
    "only_bot/deep": ("dir",),
    "only_bot/deep/er": ("dir",),
    "only_bot/deep/er/file": b"deep",
    "fd_dir_under_file": b"file over dir",
    "shadowed_dir": b"a file over a lower dir",
    "dir_over_file": ("dir",),
    "dir_over_file/new": b"dir wins",
    "link_mid": ("link", "a.txt"),
    "only0": b"0",
    "empty": b"",
}


@pytest.fixture
def three(lowers):
    top, mid, bot = lowers(3)
    build_three_layers(top, mid, bot)
    return [top, mid, bot]


def test_three_layer_merge_contents(mount, three):
    m = mount(three)
    got = H.contents(m)
    assert got == EXPECTED, H.unified(sorted(map(str, EXPECTED.items())), sorted(map(str, got.items())))
    # a merged directory takes its attributes from the topmost layer that has it
    assert stat.S_IMODE(os.stat(m / "dir1").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(m / "a.txt").st_mode) == 0o600
    # reading a symlink that points to a shadowed name gives the top content
    assert (m / "link_mid").read_bytes() == b"top-a"
    # lookups of names below a file that shadows a directory fail
    with pytest.raises(NotADirectoryError):
        os.stat(m / "shadowed_dir/inner")
    with pytest.raises(NotADirectoryError):
        os.stat(m / "fd_dir_under_file/hidden")
    with pytest.raises(FileNotFoundError):
        os.stat(m / "nope")
    with pytest.raises(FileNotFoundError):
        os.stat(m / "sub/nope")


def test_readdir_no_duplicates_and_dot_entries(mount, three):
    m = mount(three)
    for rel in ["", "sub", "dir1", "dir1/nested", "only_bot/deep", "dir_over_file"]:
        d = m / rel if rel else m.path
        names = H.raw_listdir(d)
        assert names.count(".") == 1 and names.count("..") == 1, f"{rel}: {names}"
        assert len(names) == len(set(names)), f"duplicates in readdir of {rel!r}: {sorted(names)}"
        expect = sorted(k.rsplit("/", 1)[-1] for k in EXPECTED
                        if (k.rsplit("/", 1)[0] if "/" in k else "") == rel)
        assert sorted(n for n in names if n not in (".", "..")) == expect, rel
    out = subprocess.run(["ls", "-a", "-1", str(m / "sub")], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"},
                         timeout=30, check=True).stdout.split("\n")
    assert out[:5] == [".", "..", "x", "y", "z"], out


def test_dtype_and_scandir_agree_with_lstat(mount, three):
    m = mount(three)
    for dirpath, dirnames, filenames in os.walk(m):
        with os.scandir(dirpath) as it:
            for e in it:
                st = os.lstat(e.path)
                assert e.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode), e.path
                assert e.is_file(follow_symlinks=False) == stat.S_ISREG(st.st_mode), e.path
                assert e.is_symlink() == stat.S_ISLNK(st.st_mode), e.path
                assert e.inode() == st.st_ino, e.path


def test_three_layer_merge_matches_kernel_overlayfs(mount, three):
    m = mount(three)
    k = mount.kernel(three)
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, "memoverlay vs kernel overlayfs:\n" + diff


def test_single_layer(mount, lowers):
    (l,) = lowers(1)
    write(l / "f", "one")
    write(l / "d/g", "two")
    m = mount([l])
    assert H.contents(m) == {"f": b"one", "d": ("dir",), "d/g": b"two"}
    diff = H.view_diff(H.view(l), H.view(m))
    assert not diff, diff


def test_many_layers(mount, lowers):
    ls = lowers(20)
    for i, l in enumerate(ls):
        write(l / f"own{i}", str(i))
        write(l / "shared", str(i))
        write(l / "d" / f"f{i}", str(i))
    m = mount(ls)
    assert (m / "shared").read_text() == "0"
    assert sorted(os.listdir(m / "d")) == sorted(f"f{i}" for i in range(20))
    for i in range(20):
        assert (m / f"own{i}").read_text() == str(i)


# --------------------------------------------------------------------------
# Whiteouts


def make_whiteout(fmt, path):
    return H.whiteout_chr(path) if fmt == "chr" else H.whiteout_wh(path)


WH_FORMATS = ["chr", pytest.param("wh", marks=pytest.mark.memoverlay_only)]


@pytest.fixture(params=WH_FORMATS)
def wh_layers(request, lowers):
    fmt = request.param
    top, mid, bot = lowers(3)
    for l, tag in ((mid, "mid"), (bot, "bot")):
        write(l / "gone.txt", tag)
        write(l / "gone_dir/inner", tag)
        write(l / "gone_dir/more/deep", tag)
        write(l / "sub/gone2", tag)
        write(l / "sub/kept", tag)
        write(l / "emptied/only", tag)
    write(bot / "back.txt", "bot")
    make_whiteout(fmt, mid / "back.txt")
    write(top / "back.txt", "top")
    write(bot / "midgone", "bot")
    make_whiteout(fmt, mid / "midgone")
    make_whiteout(fmt, top / "gone.txt")
    make_whiteout(fmt, top / "gone_dir")
    make_whiteout(fmt, top / "sub/gone2")
    make_whiteout(fmt, top / "never_existed")
    make_whiteout(fmt, top / "emptied/only")
    write(top / "visible", "top")
    return fmt, [top, mid, bot]


def test_whiteouts_hide_lower_names(mount, wh_layers):
    fmt, layers = wh_layers
    m = mount(layers)
    got = H.contents(m)
    assert got == {
        "back.txt": b"top",
        "visible": b"top",
        "sub": ("dir",),
        "sub/kept": b"mid",
        "emptied": ("dir",),
    }, sorted(got)
    for name in ["gone.txt", "gone_dir", "gone_dir/inner", "sub/gone2", "never_existed",
                 "midgone", "emptied/only"]:
        with pytest.raises(FileNotFoundError):
            os.lstat(m / name)
        with pytest.raises(FileNotFoundError):
            open(m / name, "rb")
    assert H.raw_listdir(m / "emptied") in ([".", ".."], ["..", "."])
    # markers are never shown, neither by readdir nor by lookup
    for d in ["", "sub", "emptied"]:
        names = H.raw_listdir(m / d if d else m.path)
        assert not [n for n in names if n.startswith(".wh.")], names
    for name in [".wh.gone.txt", ".wh.gone_dir", "sub/.wh.gone2", ".wh.never_existed",
                 ".wh.back.txt", "emptied/.wh.only"]:
        with pytest.raises(FileNotFoundError):
            os.lstat(m / name)
    for dirpath, dirnames, filenames in os.walk(m):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0), (dirpath, n)


def test_whiteouts_match_kernel_overlayfs(mount, wh_layers):
    fmt, layers = wh_layers
    if fmt != "chr":
        pytest.skip("kernel overlayfs does not understand .wh. files")
    m = mount(layers)
    k = mount.kernel(layers)
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, "memoverlay vs kernel overlayfs:\n" + diff


# --------------------------------------------------------------------------
# Opaque directories

OPQ_FORMATS = ["trusted", pytest.param("user", marks=pytest.mark.memoverlay_only),
               pytest.param("whfile", marks=pytest.mark.memoverlay_only)]


def make_opaque(fmt, path):
    if fmt == "whfile":
        return H.opaque_wh(path)
    return H.opaque_xattr(path, fmt)


@pytest.fixture(params=OPQ_FORMATS)
def opq_layers(request, lowers):
    fmt = request.param
    top, mid, bot = lowers(3)
    # opaque in the top layer hides everything below
    make_opaque(fmt, top / "op")
    write(top / "op/new", "top")
    write(mid / "op/old", "mid")
    write(mid / "op/sub/deep", "mid")
    write(bot / "op/older", "bot")
    # opaque in the middle layer hides only the bottom
    write(top / "mid/t0", "top")
    make_opaque(fmt, mid / "mid")
    write(mid / "mid/m1", "mid")
    write(bot / "mid/b2", "bot")
    # an empty opaque dir over a full one
    make_opaque(fmt, top / "empty_op")
    write(mid / "empty_op/x", "mid")
    # a normal merged dir beside them for contrast
    write(top / "plain/a", "top")
    write(bot / "plain/b", "bot")
    return fmt, [top, mid, bot]


def test_opaque_dirs_hide_lower_entries(mount, opq_layers):
    fmt, layers = opq_layers
    m = mount(layers)
    assert sorted(os.listdir(m / "op")) == ["new"]
    assert sorted(os.listdir(m / "mid")) == ["m1", "t0"]
    assert os.listdir(m / "empty_op") == []
    assert sorted(os.listdir(m / "plain")) == ["a", "b"]
    for name in ["op/old", "op/sub", "op/older", "mid/b2", "empty_op/x"]:
        with pytest.raises(FileNotFoundError):
            os.lstat(m / name)
    for d in ["op", "mid", "empty_op"]:
        names = H.raw_listdir(m / d)
        assert ".wh..wh..opq" not in names, names
        with pytest.raises(FileNotFoundError):
            os.lstat(m / d / ".wh..wh..opq")
        xs = os.listxattr(m / d)
        assert not [x for x in xs if ".overlay." in x], xs
        for ns in ("trusted", "user"):
            with pytest.raises(OSError) as ei:
                os.getxattr(m / d, ns + ".overlay.opaque")
            assert ei.value.errno in (errno.ENODATA, errno.EOPNOTSUPP), ei.value


def test_opaque_dirs_match_kernel_overlayfs(mount, opq_layers):
    fmt, layers = opq_layers
    if fmt != "trusted":
        pytest.skip("kernel overlayfs (without userxattr) only knows trusted.overlay.opaque")
    m = mount(layers)
    k = mount.kernel(layers)
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, "memoverlay vs kernel overlayfs:\n" + diff


@pytest.mark.memoverlay_only
def test_mixed_marker_formats_in_one_stack(mount, lowers):
    """Layers from different tools: char-device whiteouts in one layer, .wh.
    files in another, both opaque flavours."""
    top, mid, bot = lowers(3)
    write(bot / "a", "bot")
    write(bot / "b", "bot")
    write(bot / "d/x", "bot")
    write(bot / "e/y", "bot")
    H.whiteout_wh(mid / "a")
    H.opaque_wh(mid / "d")
    write(mid / "d/m", "mid")
    H.whiteout_chr(top / "b")
    H.opaque_xattr(top / "e", "user")
    write(top / "e/t", "top")
    m = mount([top, mid, bot])
    assert H.contents(m) == {"d": ("dir",), "d/m": b"mid", "e": ("dir",), "e/t": b"top"}


def test_concurrent_readers(mount, lowers):
    """Many threads listing, stat-ing and reading the same merged tree at
    once (the daemon's session loop is multi-threaded)."""
    import threading
    top, mid, bot = lowers(3)
    for i, l in enumerate((top, mid, bot)):
        for j in range(1500):
            if (i + j) % 3 == 0:
                write(l / "d" / f"f{j:04d}", f"{i}:{j}")
    m = mount([top, mid, bot])
    want = {f"f{j:04d}" for j in range(1500)}
    errors = []

    def worker(k):
        try:
            for _ in range(5):
                names = os.listdir(m / "d")
                if len(names) != len(want) or set(names) != want:
                    errors.append((k, "listdir", len(names)))
                for j in range(k, 1500, 97):
                    data = (m / "d" / f"f{j:04d}").read_text()
                    top_i = min(i for i in range(3) if (i + j) % 3 == 0)
                    if data != f"{top_i}:{j}":
                        errors.append((k, j, data))
        except Exception as e:
            errors.append((k, repr(e)))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), "readers hung"
    assert not errors, errors[:5]

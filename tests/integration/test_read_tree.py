"""Read side: deep trees, symlinks, hard links, special files, xattrs and
the mount root's owner and mode."""

import errno
import os
import stat
import subprocess

import pytest

import helpers as H
from helpers import write, mkdir, symlink

DEPTH = 200


def test_deep_tree(mount, lowers):
    top, bot = lowers(2)
    # the chain exists in both layers; each layer adds a file at every 10th level
    for layer, tag, mod in ((bot, "bot", 0), (top, "top", 5)):
        fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(DEPTH):
                name = f"d{i:03d}"
                os.mkdir(name, dir_fd=fd)
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
                if i % 10 == mod:
                    f = os.open(f"{tag}{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                    os.write(f, f"{tag}{i}".encode())
                    os.close(f)
            f = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, tag.encode())
            os.close(f)
        finally:
            os.close(fd)
    m = mount([top, bot])
    path = "/".join(f"d{i:03d}" for i in range(DEPTH))
    assert (m / path / "leaf").read_text() == "top"
    n_dirs = n_files = 0
    for dirpath, dirnames, filenames in os.walk(m):
        n_dirs += len(dirnames)
        n_files += len(filenames)
        assert len(dirnames) <= 1
    assert n_dirs == DEPTH
    assert n_files == 1 + 2 * (DEPTH // 10)
    # walk by fd, level by level (like find/rm do)
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(DEPTH):
            names = os.listdir(fd)
            want = {f"d{i:03d}"}
            if i and (i - 1) % 10 == 0:
                want.add(f"bot{i - 1}")
            if i and (i - 1) % 10 == 5:
                want.add(f"top{i - 1}")
            assert sorted(names) == sorted(want), i
            nfd = os.open(f"d{i:03d}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert sorted(os.listdir(fd)) == ["leaf"]
        # and .. all the way up again
        for i in range(DEPTH):
            nfd = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.fstat(fd).st_ino == os.stat(m).st_ino
    finally:
        os.close(fd)


def test_long_names(mount, lowers):
    top, bot = lowers(2)
    long_top = "t" * 255
    long_bot = "b" * 255
    write(top / long_top, "top")
    write(bot / long_bot / long_bot, "bot")
    m = mount([top, bot])
    assert sorted(os.listdir(m)) == sorted([long_top, long_bot])
    assert (m / long_bot / long_bot).read_text() == "bot"
    with pytest.raises(OSError) as ei:
        os.stat(m / ("x" * 256))
    assert ei.value.errno == errno.ENAMETOOLONG


# --------------------------------------------------------------------------
# Symlinks


@pytest.fixture
def link_layers(lowers):
    top, bot = lowers(2)
    write(top / "target.txt", "target")
    mkdir(top / "dir")
    write(top / "dir/inner", "inner")
    symlink(top / "rel", "target.txt")
    symlink(top / "rel_dir", "dir")
    symlink(top / "rel_up", "../" + top.name + "/target.txt")  # relative, leaves the mount
    symlink(top / "sub/rel_parent", "../target.txt")
    symlink(top / "abs_passwd", "/etc/passwd")
    symlink(top / "dangling", "does/not/exist")
    symlink(top / "loop_a", "loop_b")
    symlink(top / "loop_b", "loop_a")
    symlink(top / "self", "self")
    symlink(top / "evil", "/")
    symlink(top / "weird", "a" * 1000)        # long target
    symlink(top / "dotdot", "../../../../../../../../..")
    # a lower directory shadowed by a symlink to a host directory
    write(bot / "shadow/lower_file", "lower")
    symlink(top / "shadow", "/etc")
    # a directory in the top layer over a symlink to a host dir in the bottom:
    # the merge must not look below the bottom layer's symlink
    write(top / "esc/mine", "top")
    symlink(bot / "esc", "/etc")
    symlink(bot / "bot_link", "target.txt")
    return [top, bot]


def test_symlinks_read_as_links(mount, link_layers):
    m = mount(link_layers)
    top = link_layers[0]
    for name in ["rel", "rel_dir", "rel_up", "sub/rel_parent", "abs_passwd", "dangling",
                 "loop_a", "loop_b", "self", "evil", "weird", "dotdot", "shadow", "bot_link"]:
        st = os.lstat(m / name)
        assert stat.S_ISLNK(st.st_mode), name
        src = top / name if os.path.lexists(top / name) else link_layers[1] / name
        assert os.readlink(m / name) == os.readlink(src), name
        assert st.st_size == len(os.readlink(src)), name
    # the kernel follows links on the mount, relative to the mount
    assert (m / "rel").read_text() == "target"
    assert (m / "rel_dir/inner").read_text() == "inner"
    assert (m / "sub/rel_parent").read_text() == "target"
    assert (m / "bot_link").read_text() == "target"
    assert sorted(os.listdir(m / "rel_dir")) == ["inner"]
    with pytest.raises(FileNotFoundError):
        open(m / "dangling")
    for name in ["loop_a", "self"]:
        with pytest.raises(OSError) as ei:
            open(m / name)
        assert ei.value.errno == errno.ELOOP


def test_symlinks_never_followed_by_the_daemon(mount, link_layers):
    m = mount(link_layers)
    mdev = os.stat(m).st_dev
    # an absolute link is a link on the mount; following it is the kernel's
    # business and lands on the host's file, not on a lower-layer file
    assert stat.S_ISLNK(os.lstat(m / "abs_passwd").st_mode)
    st = os.stat(m / "abs_passwd")
    host = os.stat("/etc/passwd")
    assert (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino)
    # evil -> / : a link, and what is below it is the host's, via the kernel
    assert stat.S_ISLNK(os.lstat(m / "evil").st_mode)
    st = os.stat(m / "evil/etc/passwd")
    assert (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino)
    assert st.st_dev != mdev
    # a top symlink shadows a lower directory completely
    assert stat.S_ISLNK(os.lstat(m / "shadow").st_mode)
    assert not os.path.exists(m / "shadow/lower_file")
    assert os.stat(m / "shadow").st_dev != mdev
    # a top dir over a bottom symlink: only the top dir's entries, nothing
    # reached through the bottom layer's link to /etc
    assert stat.S_ISDIR(os.lstat(m / "esc").st_mode)
    assert os.listdir(m / "esc") == ["mine"]
    for name in ["passwd", "hostname", "os-release"]:
        with pytest.raises(FileNotFoundError):
            os.lstat(m / "esc" / name)


def test_symlinks_match_kernel_overlayfs(mount, link_layers):
    m = mount(link_layers)
    k = mount.kernel(link_layers)
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, diff


# --------------------------------------------------------------------------
# Hard links


def test_hard_links_in_lower(mount, lowers):
    top, bot = lowers(2)
    f = write(bot / "f", "shared data")
    os.link(f, bot / "g")
    os.link(f, bot / "sub_h")
    mkdir(bot / "d")
    os.link(f, bot / "d/h")
    t = write(top / "t1", "top data")
    os.link(t, top / "t2")
    write(bot / "t1", "shadowed")  # shadowed by the top's t1
    m = mount([top, bot])
    sts = [os.lstat(m / n) for n in ("f", "g", "sub_h", "d/h")]
    assert len({s.st_ino for s in sts}) == 1, [s.st_ino for s in sts]
    assert all(s.st_nlink == 4 for s in sts), [s.st_nlink for s in sts]
    assert (m / "d/h").read_text() == "shared data"
    t1, t2 = os.lstat(m / "t1"), os.lstat(m / "t2")
    assert t1.st_ino == t2.st_ino and t1.st_nlink == t2.st_nlink == 2
    assert t1.st_ino != sts[0].st_ino
    # readdir agrees with stat
    inos = {e.name: e.inode() for e in os.scandir(m)}
    assert inos["f"] == inos["g"] == inos["sub_h"] == sts[0].st_ino
    assert inos["t1"] == inos["t2"] == t1.st_ino
    k = mount.kernel([top, bot])
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, diff


# --------------------------------------------------------------------------
# Special files


def test_special_files(mount, lowers):
    top, bot = lowers(2)
    os.mkfifo(top / "fifo")
    os.mknod(top / "null", stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(bot / "loop", stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(bot / "bigdev", stat.S_IFCHR, os.makedev(4095, 1048575))
    H.bind_socket(bot / "sock")
    for name, layer, mode in (("fifo", top, 0o640), ("null", top, 0o666), ("loop", bot, 0o660),
                              ("bigdev", bot, 0o600), ("sock", bot, 0o755)):
        os.chmod(layer / name, mode)
    m = mount([top, bot])
    checks = {
        "fifo": (stat.S_ISFIFO, None, 0o640),
        "null": (stat.S_ISCHR, (1, 3), 0o666),
        "loop": (stat.S_ISBLK, (7, 0), 0o660),
        "bigdev": (stat.S_ISCHR, (4095, 1048575), 0o600),
        "sock": (stat.S_ISSOCK, None, 0o755),
    }
    with os.scandir(m) as it:
        dtypes = {e.name: e for e in it}
    assert sorted(dtypes) == sorted(checks)
    for name, (isfmt, rdev, mode) in checks.items():
        st = os.lstat(m / name)
        assert isfmt(st.st_mode), (name, oct(st.st_mode))
        assert stat.S_IMODE(st.st_mode) == mode, name
        if rdev:
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == rdev, name
        assert not dtypes[name].is_file() and not dtypes[name].is_dir(), name
    # a fifo on the mount is a working fifo (the kernel provides the pipe)
    r = os.open(m / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(m / "fifo", os.O_WRONLY | os.O_NONBLOCK)
    os.write(w, b"through the fifo")
    assert os.read(r, 100) == b"through the fifo"
    os.close(w)
    os.close(r)
    k = mount.kernel([top, bot])
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, diff


# --------------------------------------------------------------------------
# xattrs


def test_xattrs_of_lower_files(mount, lowers):
    top, bot = lowers(2)
    f = write(top / "f", "x")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.binary", bytes(range(256)))
    os.setxattr(f, "trusted.t", b"trusted value")
    os.setxattr(f, "security.s", b"sec")
    big = write(top / "big", "y")
    os.setxattr(big, "user.big", b"V" * 4000)
    many = write(bot / "many", "z")
    for i in range(100):
        os.setxattr(many, f"user.k{i:03d}", f"value{i}".encode())
    d = mkdir(bot / "dir")
    os.setxattr(d, "user.dirattr", b"d")
    os.setxattr(d, "trusted.overlay.opaque", b"y")     # marker: never shown
    write(bot / "dir/x", "")
    write(top / "dir/y", "")
    os.setxattr(top / "dir", "user.topdir", b"t")
    os.setxattr(top / "dir", "user.overlay.opaque", b"n")  # not opaque, still hidden?
    lnk = symlink(top / "lnk", "f")
    os.setxattr(lnk, "trusted.onlink", b"L", follow_symlinks=False)
    plain = write(bot / "plain", "")
    m = mount([top, bot])

    assert os.getxattr(m / "f", "user.color") == b"blue"
    assert os.getxattr(m / "f", "user.empty") == b""
    assert os.getxattr(m / "f", "user.binary") == bytes(range(256))
    assert os.getxattr(m / "f", "trusted.t") == b"trusted value"
    assert os.getxattr(m / "f", "security.s") == b"sec"
    assert set(os.listxattr(m / "f")) >= {"user.color", "user.empty", "user.binary",
                                          "trusted.t", "security.s"}
    assert os.getxattr(m / "big", "user.big") == b"V" * 4000
    names = os.listxattr(m / "many")
    assert sorted(n for n in names if n.startswith("user.")) == [f"user.k{i:03d}" for i in range(100)]
    for i in (0, 57, 99):
        assert os.getxattr(m / "many", f"user.k{i:03d}") == f"value{i}".encode()
    with pytest.raises(OSError) as ei:
        os.getxattr(m / "f", "user.missing")
    assert ei.value.errno == errno.ENODATA
    assert [n for n in os.listxattr(m / "plain") if n.startswith("user.")] == []
    # the directory is the top layer's: its xattrs, merged entries, no markers
    assert os.getxattr(m / "dir", "user.topdir") == b"t"
    assert sorted(os.listdir(m / "dir")) == ["x", "y"]
    hidden = ["trusted.overlay."] if m.build.kernel else [".overlay."]  # kernel: no userxattr
    assert [n for n in os.listxattr(m / "dir") if any(h in n for h in hidden)] == []
    assert os.getxattr(m / "lnk", "trusted.onlink", follow_symlinks=False) == b"L"
    # size probing as getfattr does it (size 0 first) works through the mount
    import ctypes, ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    n = libc.getxattr(os.fsencode(os.fspath(m / "big")), b"user.big", None, ctypes.c_size_t(0))
    assert n == 4000
    buf = ctypes.create_string_buffer(10)
    n = libc.getxattr(os.fsencode(os.fspath(m / "big")), b"user.big", buf, ctypes.c_size_t(10))
    assert n == -1 and ctypes.get_errno() == errno.ERANGE
    # a lower file without any xattr, asked again and again as ls -l does
    # (memoverlay remembers the answer): ENODATA, and an empty list
    plain_b = os.fsencode(os.fspath(m / "plain"))
    for _ in range(3):
        with pytest.raises(OSError) as ei:
            os.getxattr(m / "plain", "security.selinux")
        assert ei.value.errno == errno.ENODATA
        if not m.build.kernel:
            assert libc.listxattr(plain_b, None, ctypes.c_size_t(0)) == 0
            assert libc.listxattr(plain_b, buf, ctypes.c_size_t(10)) == 0


def test_xattrs_match_kernel_overlayfs(mount, lowers):
    top, bot = lowers(2)
    f = write(top / "f", "x")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "trusted.b", b"2")
    d = mkdir(bot / "d")
    os.setxattr(d, "user.c", b"3")
    write(bot / "d/x", "")
    write(top / "g", "")
    m = mount([top, bot])
    k = mount.kernel([top, bot])
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, diff


# --------------------------------------------------------------------------
# Mount root owner and mode


def test_root_takes_top_lower_owner_and_mode(mount, lowers):
    top, bot = lowers(2)
    write(top / "f", "")
    write(bot / "g", "")
    os.chown(top, 1234, 5678)
    os.chmod(top, 0o750)
    os.chown(bot, 42, 43)
    os.chmod(bot, 0o711)
    m = mount([top, bot])
    st = os.stat(m)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o750)
    assert stat.S_ISDIR(st.st_mode)
    assert sorted(os.listdir(m)) == ["f", "g"]
    k = mount.kernel([top, bot])
    kst = os.stat(k)
    assert (kst.st_uid, kst.st_gid, kst.st_mode) == (st.st_uid, st.st_gid, st.st_mode)


@pytest.mark.parametrize("mode", [0o1777, 0o2755, 0o700])
def test_root_mode_special_bits(mount, lowers, mode):
    (top,) = lowers(1)
    os.chmod(top, mode)
    os.chown(top, 0, 100)
    m = mount([top])
    st = os.stat(m)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 100, mode)


# --------------------------------------------------------------------------
# Odd names, permissions as a plain user sees them


def test_odd_names(mount, lowers):
    top, bot = lowers(2)
    names = [".whatever", ".wh", ".whx", "wh.x", "...", " lead space", "trail space ",
             "new\nline", "tab\there", "star*?[", "back\\slash", "üñí©ødé", "-rf"]
    for n in names:
        write(top / n, n)
    raw = os.fsencode(top) + b"/" + b"\xff\xfe-not-utf8"
    with open(raw, "wb") as f:
        f.write(b"bytes")
    write(bot / ("n" * 200) / ("m" * 255), "long")
    m = mount([top, bot])
    got = set(os.listdir(m))
    want = set(names) | {os.fsdecode(b"\xff\xfe-not-utf8"), "n" * 200}
    assert got == want, (sorted(want - got), sorted(got - want))
    for n in names:
        assert (m / n).read_text() == n, repr(n)
    with open(os.fsencode(m) + b"/\xff\xfe-not-utf8", "rb") as f:
        assert f.read() == b"bytes"
    k = mount.kernel([top, bot])
    diff = H.view_diff(H.view(k), H.view(m))
    assert not diff, diff


def as_user(m, cmd, uid=1000, gid=1000):
    """Run CMD as UID; "M/" in its arguments is the mount root, reached via an
    inherited fd (pytest's temp dirs are not traversable for other users)."""
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        cmd = [a.replace("M/", f"/proc/self/fd/{fd}/") for a in cmd]
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd],
                              capture_output=True, text=True, timeout=30, pass_fds=(fd,))
    finally:
        os.close(fd)


def test_permissions_for_a_plain_user(mount, lowers):
    """default_permissions: the kernel checks the lower modes and owners."""
    import shutil
    if not shutil.which("setpriv"):
        pytest.skip("setpriv not available")
    top, bot = lowers(2)
    os.chmod(top, 0o755)
    write(top / "public", "pub", mode=0o644)
    write(top / "secret", "sec", mode=0o600)
    write(bot / "mine", "mine", mode=0o600)
    os.chown(bot / "mine", 1000, 1000)
    write(top / "script", "#!/bin/sh\necho ran\n", mode=0o755)
    write(top / "noexec", "#!/bin/sh\necho ran\n", mode=0o644)
    mkdir(bot / "closed", 0o700)
    write(bot / "closed/inside", "x")
    m = mount([top, bot])
    assert as_user(m, ["cat", "M/public"]).stdout == "pub"
    r = as_user(m, ["cat", "M/secret"])
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    assert as_user(m, ["cat", "M/mine"]).stdout == "mine"
    assert as_user(m, ["M/script"]).stdout.strip() == "ran"
    r = as_user(m, ["M/noexec"])
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = as_user(m, ["ls", "M/closed"])
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    assert as_user(m, ["test", "-r", "M/public"]).returncode == 0
    assert as_user(m, ["test", "-r", "M/secret"]).returncode != 0
    assert os.access(m / "script", os.X_OK) and not os.access(m / "noexec", os.X_OK)
    assert os.access(m / "secret", os.R_OK)   # root

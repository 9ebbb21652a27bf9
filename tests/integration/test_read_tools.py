"""Read side, as a user's tools see it: ls -lR, find, du, tar over the mount
give the same as over kernel overlayfs of the same layers."""

import os
import re
import stat
import subprocess

import pytest

import helpers as H
from helpers import write, mkdir, symlink

ENV = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}


@pytest.fixture
def tool_layers(lowers):
    top, mid, bot = lowers(3)
    t = 1_600_000_000
    # bottom
    write(bot / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(bot / "etc/group", "root:x:0:\n")
    write(bot / "etc/hosts", "127.0.0.1 localhost\n")
    write(bot / "usr/bin/tool", b"\x7fELF" + bytes(range(256)) * 64, mode=0o755)
    write(bot / "usr/lib/libx.so.1.2", os.urandom(300_000), mode=0o644)
    symlink(bot / "usr/lib/libx.so.1", "libx.so.1.2")
    symlink(bot / "usr/lib/libx.so", "libx.so.1")
    write(bot / "var/log/old.log", "old\n" * 1000)
    write(bot / "home/user/.profile", "export A=1\n", mode=0o600)
    os.chown(bot / "home/user", 1000, 1000)
    os.chown(bot / "home/user/.profile", 1000, 1000)
    f = write(bot / "srv/data/a", "linked")
    os.link(f, bot / "srv/data/b")
    os.link(f, bot / "srv/c")
    write(bot / "opq/below", "hidden")
    mkdir(bot / "empty_dir")
    os.mkfifo(bot / "srv/fifo")
    os.mknod(bot / "dev_null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(bot / "etc/hosts", "user.origin", b"bottom")
    # middle
    write(mid / "etc/hosts", "10.0.0.1 mid\n")
    write(mid / "etc/mid.conf", "m=1\n", mode=0o640)
    os.chown(mid / "etc/mid.conf", 0, 42)
    write(mid / "var/log/new.log", "")
    H.whiteout_chr(mid / "var/log/old.log")
    write(mid / "opq/mid_file", "hidden too")
    mkdir(mid / "usr/share/doc", 0o755)
    write(mid / "usr/share/doc/README", "doc\n")
    # top
    write(top / "etc/motd", "hello\n")
    os.setxattr(top / "etc/motd", "user.k", b"v")
    os.setxattr(top / "etc/motd", "trusted.t", b"w")
    H.whiteout_chr(top / "etc/group")
    H.opaque_xattr(top / "opq", "trusted")
    write(top / "opq/top_only", "top")
    write(top / "usr/bin/tool", b"#!/bin/sh\necho new\n", mode=0o4755)
    mkdir(top / "tmp", 0o1777)
    write(top / "sparse", b"")
    with open(top / "sparse", "r+b") as fh:
        fh.truncate(5 << 20)
        fh.seek(3 << 20)
        fh.write(b"data in the middle")
    # fixed times everywhere (directories last, bottom-up)
    for layer in (top, mid, bot):
        for dirpath, dirnames, filenames in os.walk(layer, topdown=False):
            for n in filenames + dirnames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    continue
                os.utime(p, ns=(t * 10**9, (t + len(p)) * 10**9 + 123456789), follow_symlinks=False)
        os.utime(layer, ns=(t * 10**9, t * 10**9))
    return [top, mid, bot]


def run(cmd, cwd, check=True):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, env=ENV, timeout=120)
    if check:
        assert r.returncode == 0, f"{cmd} in {cwd}: rc {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r


def both(mount, layers):
    m = mount(layers)
    k = mount.kernel(layers)
    return m, k


def test_ls_lR(mount, tool_layers):
    m, k = both(mount, tool_layers)

    def ls(root):
        out = run(["ls", "-lRan", "--time-style=+%s.%N", "."], cwd=root).stdout.decode()
        lines = []
        for line in out.splitlines():
            if line.startswith("total "):
                continue   # block counts depend on the filesystem
            f = line.split(None, 6)
            if len(f) == 7 and f[0].startswith("d"):
                f[1] = "N"     # directory link counts and sizes are filesystem-specific
                f[4] = "S"
                line = " ".join(f)
            elif len(f) == 7:
                line = " ".join(f)
            lines.append(line)
        return lines

    exp, got = ls(k), ls(m)
    assert exp == got, "ls -lR: kernel overlayfs vs memoverlay\n" + H.unified(exp, got, "kernel", "memoverlay")


def test_find(mount, tool_layers):
    m, k = both(mount, tool_layers)

    def find(root):
        out = run(["find", ".", "-printf", r"%y %m %U %G %s %n %T@ %l %p\n"], cwd=root).stdout.decode()
        lines = []
        for line in out.splitlines():
            f = line.split(" ")
            if f[0] == "d":
                f[4] = f[5] = "-"
            lines.append(" ".join(f))
        return sorted(lines)

    exp, got = find(k), find(m)
    assert exp == got, "find: kernel overlayfs vs memoverlay\n" + H.unified(exp, got, "kernel", "memoverlay")
    # find's own walk agrees with the names readdir gives
    assert len(got) == len(H.walk_stats(m))


def test_du(mount, tool_layers):
    m, k = both(mount, tool_layers)

    def du_files(root):
        out = run(["du", "-a", "-l", "--apparent-size", "-b", "."], cwd=root).stdout.decode()
        res = {}
        for line in out.splitlines():
            size, path = line.split("\t", 1)
            if not os.path.isdir(os.path.join(root, path)) or os.path.islink(os.path.join(root, path)):
                res[path] = int(size)
        return res

    exp, got = du_files(k), du_files(m)
    assert exp == got, H.unified([f"{p} {s}" for p, s in sorted(exp.items())],
                                 [f"{p} {s}" for p, s in sorted(got.items())], "kernel", "memoverlay")
    # plain du (disk usage in blocks, what users run) agrees for every file
    def du_blocks(root):
        out = run(["du", "-a", "-l", "-B1", "."], cwd=root).stdout.decode()
        return sorted(l for l in out.splitlines()
                      if not os.path.isdir(os.path.join(root, l.split("\t", 1)[1])))
    exp, got = du_blocks(k), du_blocks(m)
    assert exp == got, H.unified(exp, got, "kernel", "memoverlay")
    # du -s counts every inode once: equal to the sum over unique inodes
    total = int(run(["du", "-s", "--apparent-size", "-b", "."], cwd=m).stdout.split()[0])
    seen, want = set(), 0
    for rel, st in H.walk_stats(m).items():
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        want += st.st_size
    assert total == want


def test_tar(mount, tool_layers):
    m, k = both(mount, tool_layers)
    cmd = ["tar", "c", "--sort=name", "--numeric-owner", "--format=posix",
           "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
           "--xattrs", "--xattrs-include=*", "-f", "-", "."]

    def tar(root):
        return run(cmd, cwd=root).stdout

    exp, got = tar(k), tar(m)
    if exp != got:
        el = subprocess.run(["tar", "tv", "--numeric-owner", "--full-time", "--xattrs"], input=exp,
                            capture_output=True, env=ENV, timeout=60).stdout.decode().splitlines()
        gl = subprocess.run(["tar", "tv", "--numeric-owner", "--full-time", "--xattrs"], input=got,
                            capture_output=True, env=ENV, timeout=60).stdout.decode().splitlines()
        pytest.fail("tar c of the mount differs from tar c of kernel overlayfs "
                    f"({len(exp)} vs {len(got)} bytes)\n" + H.unified(el, gl, "kernel", "memoverlay"))
    listing = subprocess.run(["tar", "tv", "--xattrs"], input=got, capture_output=True,
                             env=ENV, timeout=60).stdout.decode()
    assert "./etc/motd" in listing and "./usr/lib/libx.so.1.2" in listing, listing
    assert b"user.k" in got and b"trusted.t" in got
    assert b"./etc/group" not in got and b"./opq/below" not in got and b"old.log" not in got

"""Container runtimes' parts, played exactly:

- containerd (fuse-overlayfs snapshotter style): `mount.fuse3 overlay TARGET
  -o lowerdir=L2:L1 -o rw,nodev -t memoverlay`, unmounted with
  `fusermount3 -u` and umount2() as the fallback;
- containers/storage (mount_program): `memoverlay -o lowerdir=l/A:l/B,
  context="...",uidmapping=...,gidmapping=... MERGED` run from the driver's
  home directory with relative `l/` short links, its output captured (the
  pipes must reach EOF once the mount is up);
- a root file system as the lower layer (a small tree copied from the
  installed system, cached in /var/tmp): chroot into the mount inside
  `unshare -Urm`, run commands, useradd, edit /etc -- and nothing below
  changes."""

import ctypes
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import helpers as H
from helpers import write, mkdir

pytestmark = pytest.mark.memoverlay_only

_libc = ctypes.CDLL(None, use_errno=True)


def umount2(path, flags=0):
    if _libc.umount2(os.fsencode(os.fspath(path)), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fspath(path))


def daemon_on_path(build):
    """PATH for mount.fuse3's `sh -c memoverlay ...`: the installed binary if
    it is this build, else the build directory first."""
    inst = shutil.which("memoverlay", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
    if inst and hashlib.sha256(open(inst, "rb").read()).digest() == \
            hashlib.sha256(open(build.exe, "rb").read()).digest():
        return os.environ.get("PATH", "/usr/bin:/bin")
    return f"{build.exe.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def test_containerd_mount_fuse3(mount, lowers, tmp_path):
    top, bot = lowers(2)
    write(bot / "etc/os-release", "ID=base\n")
    write(bot / "bin/tool", "#!/bin/sh\necho tool\n", mode=0o755)
    write(top / "etc/os-release", "ID=app\n")
    write(top / "app/config", "a=1\n")
    target = mkdir(tmp_path / "snapshots/1/fs")
    helper = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
    m = mount([top, bot], mountpoint=target,
              env_extra={"PATH": daemon_on_path(mount.build)},
              argv=[helper, "overlay", str(target), "-o", f"lowerdir={top}:{bot}",
                    "-o", "rw,nodev", "-t", "memoverlay"])
    info = H.mounts_at(target)[-1]
    assert "nodev" in info["mount_opts"] and "rw" in info["mount_opts"], info
    assert (m / "etc/os-release").read_text() == "ID=app\n"
    assert subprocess.run([str(m / "bin/tool")], capture_output=True, text=True,
                          timeout=H.DEADLINE).stdout == "tool\n"
    (m / "app/config").write_text("a=2\n")
    (m / "app/new").write_text("n")
    os.unlink(m / "etc/os-release")
    assert not (m / "etc/os-release").exists()
    # containerd's unmount: fusermount3 -u, then umount2 if that failed
    pids = H.daemon_pids(target)
    r = subprocess.run(["fusermount3", "-u", str(target)], capture_output=True, text=True,
                       timeout=20)
    if r.returncode != 0:
        umount2(target)
    assert not H.is_mounted(target)
    assert not H.wait_pids_gone(pids, H.DEADLINE), \
        "daemon still running after containerd's unmount"


def _storage_home(tmp_path):
    """containers/storage's overlay home: layers under <id>/diff, short
    links under l/, the mount under <id>/merged."""
    home = mkdir(tmp_path / "storage/overlay")
    base = mkdir(home / "0c4e-base/diff")
    app = mkdir(home / "9f1d-app/diff")
    mkdir(home / "l")
    os.symlink("../0c4e-base/diff", home / "l/BASEBASEBASEBASE")
    os.symlink("../9f1d-app/diff", home / "l/APPAPPAPPAPPAPPA")
    merged = mkdir(home / "9f1d-app/merged")
    return home, base, app, merged


def _run_storage(mount, home, merged, opts, tmp_path):
    san = mount._new_dir("san")
    mount.extra_mps.append(str(merged))     # always unmounted at teardown
    argv = [*mount.build.cmd, "-o", opts, str(merged)]
    try:
        r = subprocess.run(argv, cwd=home, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env=mount.env(san))
    except subprocess.TimeoutExpired:
        pytest.fail("the caller's pipes did not reach EOF within 30s of starting "
                    "(the daemon keeps stdout/stderr open)")
    return r, san


def _finish_storage(merged, san, layers_before):
    pids = H.daemon_pids(merged)
    r = subprocess.run(["fusermount3", "-u", str(merged)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    assert not H.wait_pids_gone(pids, H.DEADLINE)
    for layer, before in layers_before:
        after = H.tree_records(layer)
        assert after == before, "\n".join(H.tree_diff(before, after))
    logs = [open(os.path.join(san, f), errors="replace").read()[:6000]
            for f in sorted(os.listdir(san))]
    assert not logs, "\n".join(logs)


CONTEXT = 'context="system_u:object_r:container_file_t:s0:c1,c2"'


def test_containers_storage_mount_program(mount, tmp_path):
    """The options containers/storage passes (no id mapping): relative
    lowerdir short links from the home directory, a quoted SELinux context
    with a comma, several -o groups."""
    home, base, app, merged = _storage_home(tmp_path)
    write(base / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(app / "srv/index.html", "<h1>hi</h1>\n")
    before = [(p, H.tree_records(p)) for p in (base, app)]
    r, san = _run_storage(mount, home, merged,
                          f"lowerdir=l/APPAPPAPPAPPAPPA:l/BASEBASEBASEBASE,{CONTEXT}", tmp_path)
    assert r.returncode == 0, r.stderr
    assert H.is_mounted(merged)
    assert (merged / "srv/index.html").read_text() == "<h1>hi</h1>\n"
    (merged / "etc/passwd").write_text("changed\n")
    _finish_storage(merged, san, before)


def test_containers_storage_with_id_mapping(mount, tmp_path):
    home, base, app, merged = _storage_home(tmp_path)
    write(base / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(base / "home/user5/f", "five\n")
    write(app / "srv/index.html", "<h1>hi</h1>\n")
    # the image keeps the container's ids (0 is its root); the mount shows
    # them as the host ids 1000.. the container's user namespace maps them
    # to, as fuse-overlayfs does with the same option
    os.lchown(base / "home/user5", 5, 6)
    os.lchown(base / "home/user5/f", 5, 6)
    write(base / "unmapped", "u")
    os.lchown(base / "unmapped", 70000, 70000)   # outside the mapping
    before = [(p, H.tree_records(p)) for p in (base, app)]
    opts = (f"lowerdir=l/APPAPPAPPAPPAPPA:l/BASEBASEBASEBASE,{CONTEXT},"
            f"uidmapping=:0:1000:65536,gidmapping=:0:1000:65536")
    r, san = _run_storage(mount, home, merged, opts, tmp_path)
    assert r.returncode == 0, r.stderr
    assert H.is_mounted(merged)
    st = os.stat(merged / "etc/passwd")
    assert (st.st_uid, st.st_gid) == (1000, 1000), "the container's root is host 1000"
    st = os.stat(merged / "home/user5/f")
    assert (st.st_uid, st.st_gid) == (1005, 1006)
    st = os.stat(merged / "unmapped")
    assert st.st_uid == 65534, f"an owner outside the mapping shows as {st.st_uid}"
    (merged / "new").write_text("n")
    os.chown(merged / "new", 1005, 1006)
    st = os.stat(merged / "new")
    assert (st.st_uid, st.st_gid) == (1005, 1006)
    os.chown(merged / "etc/passwd", 1007, 1007)  # metadata copy-up of a mapped file
    assert os.stat(merged / "etc/passwd").st_uid == 1007
    _finish_storage(merged, san, before)


# --------------------------------------------------------------------------
# A root file system as the lower layer

ROOTFS_CACHE = Path("/var/tmp/memoverlay-test-rootfs-v2")
ROOTFS_BINS = ["sh", "dash", "ls", "cat", "id", "grep", "sed", "mkdir", "touch", "chown",
               "stat", "env", "rm", "cp", "mv", "head", "tail", "wc", "tr", "uname", "sort",
               "cut", "useradd", "groupadd", "usermod"]
ROOTFS_ETC = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/login.defs",
              "etc/default/useradd", "etc/hosts", "etc/hostname", "etc/nsswitch.conf",
              "etc/os-release", "usr/lib/os-release", "etc/debian_version"]


def _closure(paths):
    """Files (real paths, plus the symlinks on the way) needed to run PATHS."""
    need = set()

    def add(p):
        p = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if p in need or not os.path.lexists(p):
            return
        need.add(p)
        if os.path.islink(p):
            add(os.path.join(os.path.dirname(p), os.readlink(p)))
    for p in paths:
        add(p)
        r = subprocess.run(["ldd", p], capture_output=True, text=True, timeout=30)
        for line in r.stdout.splitlines():
            for w in line.split():
                if w.startswith("/"):
                    add(w)
    return need


def rootfs_lower():
    """A small root file system (dash, coreutils, grep, sed, useradd and the
    /etc they need) copied from the installed system with tar; cached in
    /var/tmp between runs (rebuilt if incomplete)."""
    done = ROOTFS_CACHE / ".complete"
    if done.exists():
        return ROOTFS_CACHE / "rootfs"
    shutil.rmtree(ROOTFS_CACHE, ignore_errors=True)
    tmp = Path(str(ROOTFS_CACHE) + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    root = mkdir(tmp / "rootfs")
    bins = [shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin") for b in ROOTFS_BINS]
    files = _closure([b for b in bins if b])
    files |= {"/" + e for e in ROOTFS_ETC if os.path.lexists("/" + e)}
    rel = sorted(f.lstrip("/") for f in files)
    tar = subprocess.Popen(["tar", "-C", "/", "--no-recursion", "-cf", "-", "-T", "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    untar = subprocess.Popen(["tar", "-C", str(root), "-xpf", "-"], stdin=tar.stdout)
    tar.stdout.close()
    tar.stdin.write(("\n".join(rel) + "\n").encode())
    tar.stdin.close()
    assert tar.wait(timeout=120) == 0 and untar.wait(timeout=120) == 0
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
        if os.path.islink("/" + link) and not os.path.lexists(root / link):
            os.symlink(target, root / link)
    for d in ("tmp", "root", "home", "proc", "dev", "var/lib", "etc/skel"):
        mkdir(root / d)
    os.chmod(root / "tmp", 0o1777)
    (tmp / ".complete").write_text("ok\n")
    os.rename(tmp, ROOTFS_CACHE)
    return ROOTFS_CACHE / "rootfs"


def shifted_rootfs(base=100000):
    """The cached rootfs with every owner shifted by BASE, as a rootless
    runtime without id mapping stores an image (host ids 100000..)."""
    src = rootfs_lower()
    dst = Path(f"{ROOTFS_CACHE}-shift{base}")
    if (dst / ".complete").exists():
        return dst / "rootfs"
    shutil.rmtree(dst, ignore_errors=True)
    tmp = Path(f"{dst}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    subprocess.run(["cp", "-a", str(src), str(tmp / "rootfs")], check=True, timeout=120)
    for dirpath, dirs, files in os.walk(tmp / "rootfs"):
        for n in [dirpath] + [os.path.join(dirpath, x) for x in dirs + files]:
            st = os.lstat(n)
            os.lchown(n, st.st_uid + base, st.st_gid + base)
            if not os.path.islink(n):
                os.chmod(n, st.st_mode & 0o7777)   # chown clears setuid bits
    (tmp / ".complete").write_text("ok\n")
    os.rename(tmp, dst)
    return dst / "rootfs"


CHROOT_SCRIPT = r"""
M={mnt}
{exe} -o lowerdir={lower} "$M"
chroot "$M" /bin/sh -ec '
ls / | tr "\n" " "; echo
. /etc/os-release; echo "os=$ID"
id -u
echo "10.1.2.3 db.internal" >> /etc/hosts
tail -n 1 /etc/hosts
mkdir -p /srv/app && echo data > /srv/app/x && cat /srv/app/x
rm /etc/debian_version
test ! -e /etc/debian_version
{useradd}
'
umount "$M"
"""

USERADD = r"""
useradd -u 1234 -s /bin/sh newuser
grep "^newuser:" /etc/passwd | cut -d: -f1-4
grep -c "^newuser:" /etc/shadow
stat -c "%U:%G %a" /etc/shadow
"""


def _check_rootfs_run(r, root, useradd):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout {r.stdout}\nstderr {r.stderr}"
    lines = r.stdout.splitlines()
    assert lines[0].split() == sorted(os.listdir(root)), lines[0]
    assert lines[1:5] == ["os=debian", "0", "10.1.2.3 db.internal", "data"], r.stdout
    if useradd:
        assert lines[5:8] == ["newuser:x:1234:1234", "1", "root:shadow 640"], r.stdout


def _rootfs_env(san):
    return dict(os.environ, ASAN_OPTIONS=f"log_path={san}/asan:detect_leaks=1",
                UBSAN_OPTIONS=f"log_path={san}/ubsan:print_stacktrace=1")


def _san_clean(san):
    logs = [open(san / f, errors="replace").read()[:6000] for f in sorted(os.listdir(san))]
    assert not logs, "\n".join(logs)


def test_rootfs_chroot_in_unshare_Urm(memoverlay_build):
    """`unshare -Urm` as root (only id 0 mapped): chroot into the mount,
    look around, edit /etc, create and delete. (Files of other groups, e.g.
    /etc/shadow of group shadow, are unmapped there and the kernel refuses to
    write them -- that needs a namespace with more ids, next test.)"""
    root = rootfs_lower()
    before = H.tree_records(root)
    with H.shared_tmpdir("mo-rootfs.") as (d, left):
        mnt = mkdir(d / "mnt")
        san = mkdir(d / "san")
        script = CHROOT_SCRIPT.format(mnt=mnt, exe=memoverlay_build.shell_cmd, lower=root, useradd="")
        r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                           text=True, timeout=120, env=_rootfs_env(san), stdin=subprocess.DEVNULL)
        _check_rootfs_run(r, root, False)
        assert not H.wait_pids_gone(H.processes_mentioning(d), H.DEADLINE), "daemon left running"
        _san_clean(san)
    assert not left, left
    after = H.tree_records(root)
    assert after == before, "the rootfs lower changed:\n" + "\n".join(H.tree_diff(before, after))


def test_rootfs_chroot_useradd_rootless(memoverlay_build):
    """A rootless runtime: ids 0..65535 of the namespace are host
    100000..165535, the image is stored with shifted owners. chroot into the
    mount, useradd (rewrites /etc/passwd, shadow, group, gshadow with locks
    and renames), edit /etc -- the image below is unchanged."""
    root = shifted_rootfs()
    before = H.tree_records(root)
    with H.shared_tmpdir("mo-rootfs.") as (d, left):
        mnt = mkdir(d / "mnt")
        os.chown(mnt, 100000, 100000)
        san = mkdir(d / "san")
        os.chmod(san, 0o777)
        script = CHROOT_SCRIPT.format(mnt=mnt, exe=memoverlay_build.shell_cmd, lower=root,
                                      useradd=USERADD)
        r = H.run_in_userns(script, ns_root=(100000, 100000), timeout=120,
                            env=_rootfs_env(san))
        _check_rootfs_run(r, root, True)
        assert not H.wait_pids_gone(H.processes_mentioning(d), H.DEADLINE), "daemon left running"
        _san_clean(san)
    assert not left, left
    after = H.tree_records(root)
    assert after == before, "the rootfs lower changed:\n" + "\n".join(H.tree_diff(before, after))

"""The command line, as a user or a container runtime drives it: bad input
is a one-line error naming the bad value and nothing mounted; -h, -V; the
mount words fstab and mount.fuse3 pass; SOURCE; `\\:`; -f; the caller's
pipes reach EOF."""

import errno
import os
import re
import signal
import subprocess

import pytest

import helpers as H
from helpers import write, mkdir

pytestmark = pytest.mark.memoverlay_only

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def project_version():
    m = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text())
    return m.group(1) if m else None


@pytest.fixture
def layer(lowers):
    (l,) = lowers(1)
    write(l / "hello", "world")
    return l


def assert_clean_failure(r, mnt, names):
    """Non-zero exit, one line on stderr naming one of NAMES, nothing mounted,
    no daemon left."""
    err = r.stderr.strip()
    assert r.returncode != 0, f"exit 0 for bad input; stderr: {err!r}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"want a one-line error, got {len(lines)} lines: {err!r}"
    assert any(n in err for n in names), f"error does not name {names}: {err!r}"
    assert not H.is_mounted(mnt), f"{mnt} mounted after a failed start"
    # a daemon that was forked may still be on its way out
    left = H.wait_pids_gone(H.daemon_pids(mnt), H.DEADLINE)
    assert not left, f"daemon {left} left running after a failed start"
    assert r.returncode not in (-signal.SIGSEGV, -signal.SIGABRT, 134, 139), r.returncode


def test_unknown_option(mount, layer, mnt):
    r = mount.run([mnt, "-o", f"lowerdir={layer},frobnicate"])
    assert_clean_failure(r, mnt, ["frobnicate"])


def test_unknown_option_with_value(mount, layer, mnt):
    r = mount.run([mnt, "-o", f"bogus_opt=17,lowerdir={layer}"])
    assert_clean_failure(r, mnt, ["bogus_opt"])


def test_missing_lowerdir(mount, mnt):
    r = mount.run([mnt])
    assert_clean_failure(r, mnt, ["lowerdir"])
    r = mount.run([mnt, "-o", "ro,noatime"])
    assert_clean_failure(r, mnt, ["lowerdir"])


def test_empty_lowerdir(mount, mnt):
    r = mount.run([mnt, "-o", "lowerdir="])
    assert_clean_failure(r, mnt, ["lowerdir"])


def test_lowerdir_missing_path(mount, layer, mnt, tmp_path):
    missing = tmp_path / "does-not-exist"
    r = mount.run([mnt, "-o", f"lowerdir={layer}:{missing}"])
    assert_clean_failure(r, mnt, [str(missing)])


def test_lowerdir_is_a_file(mount, layer, mnt):
    f = layer / "hello"
    r = mount.run([mnt, "-o", f"lowerdir={f}"])
    assert_clean_failure(r, mnt, [str(f)])


def test_mountpoint_inside_lower_layer(mount, lowers):
    top, bot = lowers(2)
    inside = mkdir(bot / "some/dir")
    r = mount.run([inside, "-o", f"lowerdir={top}:{bot}"])
    assert_clean_failure(r, inside, [str(inside), str(bot)])


@pytest.mark.parametrize("opt", ["upperdir", "workdir"])
def test_upperdir_workdir_rejected(mount, layer, mnt, tmp_path, opt):
    d = mkdir(tmp_path / opt)
    r = mount.run([mnt, "-o", f"lowerdir={layer},{opt}={d}"])
    assert_clean_failure(r, mnt, [opt])


def test_missing_mountpoint(mount, layer, tmp_path):
    mp = tmp_path / "no-such-mnt"
    r = mount.run([mp, "-o", f"lowerdir={layer}"])
    assert_clean_failure(r, mp, [str(mp)])


def test_no_arguments(mount):
    r = mount.run([])
    assert r.returncode != 0
    assert r.stderr.strip(), "no arguments: expected a message on stderr"


def test_too_many_arguments(mount, layer, mnt, tmp_path):
    r = mount.run(["overlay", mnt, tmp_path, "-o", f"lowerdir={layer}"])
    assert r.returncode != 0
    assert not H.is_mounted(mnt) and not H.is_mounted(tmp_path)


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(mount, flag):
    r = mount.run([flag])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "memoverlay" in out and project_version() in out, out
    # the libfuse it was built with, and what that libfuse can ask for
    assert re.search(r"^libfuse \d+\.\d+\.\d+ \(", out, re.M), out
    for feature in ("passthrough", "io_uring", "KILLPRIV_V2"):
        assert re.search(rf"\b{feature} (yes|no)\b", out), out


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(mount, flag):
    r = mount.run([flag])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert re.search(r"usage", out, re.I) and "lowerdir" in out, out


# --------------------------------------------------------------------------
# Successful starts


def test_source_argument_is_ignored(mount, layer):
    m = mount([layer], source="overlay")
    assert (m / "hello").read_text() == "world"


def test_escaped_colon_in_lowerdir(mount, lowers, tmp_path):
    top = mkdir(tmp_path / "lower/with:colon")
    bot = mkdir(tmp_path / "lower/a:b:c")
    (plain,) = lowers(1)
    write(top / "t", "top")
    write(bot / "b", "bot")
    write(plain / "p", "plain")
    m = mount([top, bot, plain])   # the fixture writes with\:colon:a\:b\:c:...
    assert "with\\:colon" in m.argv[-1] or any("with\\:colon" in a for a in m.argv)
    assert sorted(os.listdir(m)) == ["b", "p", "t"]
    assert (m / "b").read_text() == "bot"


def test_pipes_reach_eof_after_start(mount, layer, mnt):
    """A runtime that captures the starter's stdout/stderr must not hang: the
    daemon must not keep the pipes open."""
    try:
        r = mount.run(["overlay", mnt, "-o", f"lowerdir={layer}"], timeout=H.DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail("memoverlay's start did not close the caller's stdout/stderr pipes "
                    f"(subprocess.run with capture_output hung for {H.DEADLINE:.0f}s)")
    assert r.returncode == 0, r.stderr
    assert H.is_mounted(mnt)
    assert (mnt / "hello").read_text() == "world"
    assert H.daemon_pids(mnt), "no daemon process after a successful start"


WORDS = [
    ("rw,dev,suid,exec,atime,async,defaults", [], ["ro", "nodev", "nosuid", "noexec"]),
    ("ro", ["ro"], []),
    ("nodev,nosuid,noexec,noatime", ["nodev", "nosuid", "noexec", "noatime"], ["ro"]),
    ("relatime,nodiratime", ["relatime"], []),
    # libfuse cannot pass MS_STRICTATIME; the daemon applies the atime policy itself
    ("strictatime", [], ["noatime"]),
    ("allow_other,default_permissions", [], []),
    ("rw,nosuid,nodev,relatime", ["nosuid", "nodev", "relatime"], ["ro"]),  # what mount.fuse3 passes
]


@pytest.mark.parametrize("opts,present,absent", WORDS, ids=[w[0] for w in WORDS])
def test_mount_words_accepted(mount, layer, opts, present, absent):
    m = mount([layer], opts)
    assert (m / "hello").read_text() == "world"
    mi = H.mounts_at(m)
    flags = set(mi[-1]["mount_opts"])
    assert set(present) <= flags, f"-o {opts}: mount flags {sorted(flags)}"
    assert not (set(absent) & flags), f"-o {opts}: mount flags {sorted(flags)}"
    if "ro" in present:
        with pytest.raises(OSError) as ei:
            open(m / "new-file", "w")
        assert ei.value.errno == errno.EROFS


def test_foreground(mount, layer, mnt, tmp_path):
    err = open(tmp_path / "fg.err", "wb")
    p = subprocess.Popen([*mount.build.cmd, mnt, "-f", "-o", f"lowerdir={layer}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                         env=mount.env(mount._new_dir("san")))
    try:
        assert H.wait_for(lambda: H.is_mounted(mnt) or p.poll() is not None, H.DEADLINE), \
            f"-f: not mounted within {H.DEADLINE:.0f}s"
        assert H.is_mounted(mnt), f"-f: exited {p.wait()} before mounting: " \
                                  f"{(tmp_path / 'fg.err').read_text(errors='replace')}"
        assert (mnt / "hello").read_text() == "world"
        assert p.poll() is None, "-f: the process must stay in the foreground"
        H.unmount(mnt)
        assert p.wait(timeout=H.DEADLINE) == 0, "-f: exit status after unmount"
    finally:
        if p.poll() is None:
            H.unmount(mnt)
            try:
                p.wait(timeout=H.DEADLINE)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        err.close()


def test_debug_logs_and_stays_in_foreground(mount, layer, mnt, tmp_path):
    errf = tmp_path / "dbg.err"
    with open(errf, "wb") as err:
        p = subprocess.Popen([*mount.build.cmd, mnt, "-d", "-o", f"lowerdir={layer}"],
                             stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                             env=mount.env(mount._new_dir("san")))
        try:
            assert H.wait_for(lambda: H.is_mounted(mnt) or p.poll() is not None, H.DEADLINE), \
                f"-d: not mounted within {H.DEADLINE:.0f}s"
            assert H.is_mounted(mnt), f"-d: exited {p.wait()}: {errf.read_text(errors='replace')}"
            os.listdir(mnt)
            assert p.poll() is None, "-d implies -f"
            H.unmount(mnt)
            assert p.wait(timeout=H.DEADLINE) == 0
        finally:
            if p.poll() is None:
                H.unmount(mnt)
                try:
                    p.wait(timeout=H.DEADLINE)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    assert errf.stat().st_size > 0, "-d produced no debug output"


def _path_with_daemon(mount):
    return {"PATH": f"{mount.build.exe.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def test_mount_fuse3_helper(mount, layer, tmp_path):
    mp = mkdir(tmp_path / "mnt-helper")
    helper = "/sbin/mount.fuse3" if os.path.exists("/sbin/mount.fuse3") else "mount.fuse3"
    m = mount([layer], mountpoint=mp, env_extra=_path_with_daemon(mount),
              argv=[helper, "overlay", str(mp), "-o", mount.build.with_opts(f"lowerdir={layer}"),
                    "-t", "memoverlay"])
    assert (m / "hello").read_text() == "world"


ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_mount_t_fuse_memoverlay(mount, layer, tmp_path):
    """mount(8) runs helpers with a sanitized PATH: only an installed
    memoverlay (meson install) identical to this build can be tested."""
    import hashlib
    import shutil
    inst = shutil.which("memoverlay", path=ROOT_PATH)
    if not inst:
        pytest.skip("memoverlay is not installed (meson install) in root's PATH")
    def digest(p):
        return hashlib.sha256(open(p, "rb").read()).hexdigest()
    if digest(inst) != digest(mount.build.exe):
        pytest.skip(f"installed {inst} is not this build")
    mp = mkdir(tmp_path / "mnt-mount")
    m = mount([layer], mountpoint=mp, env_extra=_path_with_daemon(mount),
              argv=["mount", "-t", "fuse.memoverlay", "overlay", str(mp), "-o",
                    mount.build.with_opts(f"lowerdir={layer}")])
    assert (m / "hello").read_text() == "world"


def test_relative_paths(mount, lowers, tmp_path):
    """`cd work && memoverlay -o lowerdir=l2:l1 merged` — relative layer and
    mountpoint paths mean what they mean in the caller's directory, even
    though the daemon moves on to live elsewhere."""
    top, bot = lowers(2)
    write(top / "t", "top")
    write(bot / "b", "bot")
    mp = mkdir(tmp_path / "merged")
    rel_lo = f"lowerdir={os.path.relpath(top, tmp_path)}:{os.path.relpath(bot, tmp_path)}"
    san = mount._new_dir("san")
    r = subprocess.run([*mount.build.cmd, "merged", "-o", rel_lo], cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                       env=mount.env(san))
    pids = [pid for pid, argv in H.proc_cmdlines()
            if argv and os.path.basename(argv[0]) == "memoverlay" and rel_lo in " ".join(argv)
            and H.pid_alive(pid)]
    try:
        assert r.returncode == 0, r.stderr
        assert H.is_mounted(mp), "relative mountpoint: not mounted where the caller meant"
        assert sorted(os.listdir(mp)) == ["b", "t"]
        assert (mp / "b").read_text() == "bot"
    finally:
        H.unmount(mp)
        assert not H.wait_pids_gone(pids, H.DEADLINE), "daemon did not exit after unmount"
    assert not os.listdir(san), [open(san / f).read() for f in os.listdir(san)]


def test_lowerdir_through_symlink_and_trailing_slash(mount, lowers, tmp_path):
    top, bot = lowers(2)
    write(top / "t", "top")
    write(bot / "b", "bot")
    link = tmp_path / "link-to-bot"
    os.symlink(bot, link)
    mp = mkdir(tmp_path / "mnt-sym")
    m = mount([top, link], mountpoint=mp,
              argv=[*mount.build.cmd, str(mp), "-o", f"lowerdir={top}/:{link}"])
    assert sorted(os.listdir(m)) == ["b", "t"]
    assert (m / "b").read_text() == "bot"

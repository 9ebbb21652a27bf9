"""Mount hints (gVisor annotations in an OCI config.json) honoured by the
daemon: `-o hints=CONFIG.json[,hint_mount=DEST]` takes the spec mount's
options and its hint, refuses a mount incompatible with its hint before
mounting, applies ro/noexec/nosuid/nodev/noatime (the command line may only
add restrictions), and picks shared (revalidating) access for share=shared,
for a mount without a hint and for a lower layer on a FUSE/network
filesystem."""

import errno
import json
import os
import shutil
import stat
import subprocess
import time

import pytest

import helpers as H
from helpers import write

pytestmark = pytest.mark.memoverlay_only

PREFIX = "dev.gvisor.spec.mount."
VISIBLE_WITHIN = 2.0   # seconds: a lower change seen through a shared mount


# --------------------------------------------------------------------------
# helpers


def spec(tmp_path, source, dest="/data", mount_opts=(), hint=None, name="vol",
         extra_mounts=(), filename="config.json"):
    """Write a config.json with one spec mount DEST <- SOURCE (options
    MOUNT_OPTS) and, unless HINT is None, a hint {field: value} for SOURCE.
    Returns its path."""
    ann = {}
    if hint is not None:
        fields = {"source": os.fspath(source), "type": "bind", "share": "container",
                  "lifecycle": "pod"}
        fields.update(hint)
        ann = {f"{PREFIX}{name}.{k}": v for k, v in fields.items() if v is not None}
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": dest, "type": "bind", "source": os.fspath(source),
               "options": ["rbind", *mount_opts]},
              *extra_mounts]
    doc = {"ociVersion": "1.0.2", "process": {"args": ["sh"]},
           "root": {"path": "rootfs"}, "mounts": mounts, "annotations": ann}
    p = tmp_path / filename
    p.write_text(json.dumps(doc, indent=1))
    return p


def flags_of(mnt):
    """The per-mount flags of the mount at MNT (from /proc/self/mountinfo)."""
    (info,) = H.mounts_at(mnt)
    return set(info["mount_opts"])


def assert_refused(r, mnt, names):
    """Exit 1, exactly one line on stderr naming every one of NAMES, nothing
    mounted, no daemon left."""
    err = r.stderr.strip()
    assert r.returncode == 1, f"exit {r.returncode}, want 1; stderr: {err!r}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"want a one-line error, got {len(lines)} lines: {err!r}"
    assert lines[0].startswith("memoverlay: "), lines[0]
    for n in names:
        assert n in lines[0], f"error does not name {n!r}: {lines[0]!r}"
    assert not H.is_mounted(mnt), f"{mnt} mounted after a refused start"
    # a daemon that was forked may still be on its way out
    left = H.wait_pids_gone(H.daemon_pids(mnt), H.DEADLINE)
    assert not left, f"daemon {left} left running after a refused start"


@pytest.fixture
def layer(lowers):
    (l,) = lowers(1)
    write(l / "f", "one\n")
    write(l / "script.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    return l


def run_exec(path):
    """Execute PATH directly; the errno of a failed exec, or 0."""
    try:
        subprocess.run([os.fspath(path)], check=True, capture_output=True, timeout=30)
        return 0
    except OSError as e:
        return e.errno


# --------------------------------------------------------------------------
# flags from the spec


def test_noexec_from_hint(mount, layer, tmp_path):
    cfg = spec(tmp_path, layer, mount_opts=["noexec"], hint={"options": "noexec"})
    m = mount([layer], f"hints={cfg}")
    assert "noexec" in flags_of(m)
    # a lower executable, and a binary and a script copied in (upper files)
    assert run_exec(m / "script.sh") == errno.EACCES
    shutil.copy2("/bin/true", m / "true")
    write(m / "up.sh", "#!/bin/sh\nexit 0\n", mode=0o755)
    for name in ("true", "up.sh"):
        assert os.stat(m / name).st_mode & stat.S_IXUSR
        assert run_exec(m / name) == errno.EACCES, name
        with pytest.raises(PermissionError):
            subprocess.run([os.fspath(m / name)], capture_output=True, timeout=30)


def test_exec_allowed_without_noexec(mount, layer, tmp_path):
    """The control for the test above: same spec without noexec."""
    cfg = spec(tmp_path, layer, hint={"options": "nosuid"}, mount_opts=["nosuid"])
    m = mount([layer], f"hints={cfg}")
    assert "noexec" not in flags_of(m)
    shutil.copy2("/bin/true", m / "true")
    assert run_exec(m / "true") == 0
    assert run_exec(m / "script.sh") == 0


def test_noexec_from_mount_without_hint(mount, layer, tmp_path):
    """A spec mount without a hint still gives its options."""
    cfg = spec(tmp_path, layer, mount_opts=["noexec", "nodev"])
    m = mount([layer], f"hints={cfg}")
    assert {"noexec", "nodev"} <= flags_of(m)
    assert run_exec(m / "script.sh") == errno.EACCES


def test_ro_from_hint(mount, layer, tmp_path):
    cfg = spec(tmp_path, layer, mount_opts=["ro"], hint={"options": "ro"})
    m = mount([layer], f"hints={cfg}")
    assert "ro" in flags_of(m)
    assert (m / "f").read_text() == "one\n"
    assert H.errno_of(lambda: open(m / "f", "a").close()) == errno.EROFS
    assert H.errno_of(write, m / "new", "x") == errno.EROFS
    assert H.errno_of(os.mkdir, m / "d") == errno.EROFS
    assert H.errno_of(os.unlink, m / "f") == errno.EROFS
    assert H.errno_of(os.chmod, m / "f", 0o600) == errno.EROFS


def test_command_line_cannot_loosen_the_spec(mount, layer, tmp_path):
    """rw,exec,suid,dev,strictatime on the command line do not undo the
    spec's ro,noexec,nosuid,nodev,noatime."""
    cfg = spec(tmp_path, layer, mount_opts=["ro", "noexec", "nosuid", "nodev", "noatime"],
               hint={"options": "ro,noexec,noatime"})
    m = mount([layer], f"rw,exec,suid,dev,strictatime,hints={cfg}")
    assert {"ro", "noexec", "nosuid", "nodev", "noatime"} <= flags_of(m)
    assert H.errno_of(write, m / "new", "x") == errno.EROFS
    assert run_exec(m / "script.sh") == errno.EACCES


def test_command_line_adds_restrictions(mount, layer, tmp_path):
    cfg = spec(tmp_path, layer, hint={"options": "rw"})
    m = mount([layer], f"noexec,nodev,hints={cfg}")
    assert {"noexec", "nodev"} <= flags_of(m)
    assert "ro" not in flags_of(m)
    write(m / "new", "x")
    assert run_exec(m / "script.sh") == errno.EACCES


def test_nosuid_nodev_from_spec(mount, layer, tmp_path):
    cfg = spec(tmp_path, layer, mount_opts=["nosuid", "nodev"], hint={"options": "nosuid"})
    m = mount([layer], f"hints={cfg}")
    assert {"nosuid", "nodev"} <= flags_of(m)


def test_noatime_from_hint(mount, layer, tmp_path):
    cfg = spec(tmp_path, layer, mount_opts=["noatime"], hint={"options": "noatime"})
    m = mount([layer], f"hints={cfg}")
    assert "noatime" in flags_of(m)
    # An upper file with atime before mtime: relatime would update it on read.
    write(m / "u", "data\n")
    old = (1_000_000_000, 0)
    H.utimensat(m / "u", old, H.UTIME_NOW)
    with open(m / "u") as f:
        assert f.read() == "data\n"
    assert os.stat(m / "u").st_atime_ns == 1_000_000_000 * 10**9
    # the same for a lower file after copy-up of metadata
    H.utimensat(m / "f", old, H.UTIME_NOW)
    assert (m / "f").read_text() == "one\n"
    assert os.stat(m / "f").st_atime_ns == 1_000_000_000 * 10**9


def test_relatime_without_hint_updates_atime(mount, layer, tmp_path):
    """The control for the test above: the spec asks for nothing, so the
    default relatime updates an atime older than the mtime."""
    cfg = spec(tmp_path, layer, hint={"options": "nodev"})
    m = mount([layer], f"hints={cfg}")
    assert "noatime" not in flags_of(m)
    write(m / "u", "data\n")
    H.utimensat(m / "u", (1_000_000_000, 0), H.UTIME_NOW)
    # atime moves when a read reaches the daemon; a read served from the
    # kernel's page cache never does (FUSE), so drop the cached pages first
    with open(m / "u") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == "data\n"
    assert os.stat(m / "u").st_atime_ns > 1_000_000_000 * 10**9


def test_hint_mount_picks_the_destination(mount, layer, lowers, tmp_path):
    """hint_mount=DEST chooses among mounts; a relative source resolves
    against the config's directory."""
    (other,) = lowers(1, prefix="o")
    rel = os.path.relpath(layer, tmp_path)
    cfg = spec(tmp_path, rel, dest="/data", mount_opts=["noexec"],
               hint={"options": "noexec"},
               extra_mounts=[{"destination": "/other", "type": "bind",
                              "source": os.fspath(other), "options": ["rbind", "ro"]}])
    m = mount([layer], f"hints={cfg},hint_mount=/data/")
    assert "noexec" in flags_of(m) and "ro" not in flags_of(m)
    # matching by lowerdir finds the same mount (relative source included)
    m2 = mount([layer], f"hints={cfg}")
    assert "noexec" in flags_of(m2) and "ro" not in flags_of(m2)


# --------------------------------------------------------------------------
# refused mounts


@pytest.mark.parametrize("rule", ["ro", "noexec", "noatime", "nosuid"])
def test_incompatible_mount_refused(mount, layer, mnt, tmp_path, rule):
    cfg = spec(tmp_path, layer, mount_opts=["rw"], hint={"options": rule})
    r = mount.run([mnt, "-o", f"lowerdir={layer},hints={cfg}"])
    assert_refused(r, mnt, ["/data", "vol", rule, "config.json"])


def test_incompatible_mount_fixed_by_command_line(mount, layer, tmp_path):
    """The replica is the spec mount plus the command line: adding ro
    satisfies a ro master."""
    cfg = spec(tmp_path, layer, mount_opts=["rw"], hint={"options": "ro"})
    m = mount([layer], f"ro,hints={cfg}")
    assert "ro" in flags_of(m)


def test_no_matching_mount_refused(mount, layer, lowers, mnt, tmp_path):
    (other,) = lowers(1, prefix="o")
    cfg = spec(tmp_path, other)
    r = mount.run([mnt, "-o", f"lowerdir={layer},hints={cfg}"])
    assert_refused(r, mnt, ["config.json", "hint_mount"])
    r = mount.run([mnt, "-o", f"lowerdir={layer},hints={cfg},hint_mount=/nowhere"])
    assert_refused(r, mnt, ["config.json", "/nowhere"])


def test_hint_mount_without_hints_refused(mount, layer, mnt):
    r = mount.run([mnt, "-o", f"lowerdir={layer},hint_mount=/data"])
    assert_refused(r, mnt, ["hint_mount", "hints="])


BAD_CONFIGS = {
    "truncated": '{"mounts": [',
    "not-json": "mounts: []\n",
    "mounts-not-array": '{"mounts": 3}',
    "destination-not-string": '{"mounts": [{"destination": 7, "source": "/x"}]}',
    "options-not-array": '{"mounts": [{"destination": "/d", "source": "/x", "options": "ro"}]}',
    "annotation-not-string": '{"annotations": {"dev.gvisor.spec.mount.v.source": 1}}',
    "bad-key": '{"annotations": {"dev.gvisor.spec.mount.v.a.source": "/x"}}',
    "empty-name": '{"annotations": {"dev.gvisor.spec.mount..source": "/x"}}',
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_bad_config_refused(mount, layer, mnt, tmp_path, kind):
    p = tmp_path / f"bad-{kind}.json"
    p.write_text(BAD_CONFIGS[kind])
    r = mount.run([mnt, "-o", f"lowerdir={layer},hints={p}"])
    assert_refused(r, mnt, [p.name])


def test_missing_config_refused(mount, layer, mnt, tmp_path):
    p = tmp_path / "no-such-config.json"
    r = mount.run([mnt, "-o", f"lowerdir={layer},hints={p}"])
    assert_refused(r, mnt, [p.name])


def test_duplicate_hint_sources_refused(mount, layer, mnt, tmp_path):
    ann = {}
    for name in ("a", "b"):
        ann.update({f"{PREFIX}{name}.source": os.fspath(layer), f"{PREFIX}{name}.type": "bind",
                    f"{PREFIX}{name}.share": "container"})
    p = tmp_path / "dup.json"
    p.write_text(json.dumps({"mounts": [{"destination": "/data", "source": os.fspath(layer)}],
                             "annotations": ann}))
    r = mount.run([mnt, "-o", f"lowerdir={layer},hints={p}"])
    assert_refused(r, mnt, ["dup.json"])


def test_warning_does_not_refuse(mount, layer, tmp_path):
    """An unknown hint field is a warning: the mount comes up."""
    cfg = spec(tmp_path, layer, mount_opts=["noexec"],
               hint={"options": "noexec", "colour": "blue"})
    m = mount([layer], f"hints={cfg}")
    assert "noexec" in flags_of(m)
    assert "warning" in m.err.read_text()


# --------------------------------------------------------------------------
# access: shared mounts see changes made beside them


def wait_for(fn, want, since):
    """Polls FN() until it returns WANT (or H.DEADLINE s pass). Returns the
    last value and how long after SINCE (a time.monotonic()) the last call
    that still returned something else had *started* (None: none did).

    The kernel caches what it was told before the change for at most the
    mount's timeouts: a call that started later than that after the change
    must see it, however slowly it or the calls before it ran. So a slow or
    loaded machine only makes the calls come later, never stale."""
    stale_at = None
    while True:
        t = time.monotonic()
        try:
            v = fn()
        except OSError as e:
            v = e
        if v == want:
            return v, stale_at
        stale_at = t - since
        if t - since > H.DEADLINE:
            return v, stale_at
        time.sleep(0.05)


def read(p):
    with open(p) as f:
        return f.read()


NEW_F = "two, longer\n"


def sees_changes(m, change):
    """Warm M's kernel caches (attributes of f, a negative entry for g), call
    CHANGE() to change M's lower layer behind M's back, and expect M's
    stat() to show the new size of f and the new file g in every call made
    more than VISIBLE_WITHIN seconds after the change. (A read is no test:
    the kernel refreshes the size on a read past the cached EOF whatever
    the timeouts.)"""
    assert os.stat(m / "f").st_size == 4
    with pytest.raises(FileNotFoundError):
        os.stat(m / "g")
    change()
    changed = time.monotonic()
    # The lower is changed on purpose; the fixture checks the daemon leaves
    # it as it is from here on.
    m.snapshots = [(l, H.tree_records(l)) for l in m.layers]
    for what, fn, want in (("size of f", lambda: os.stat(m / "f").st_size, len(NEW_F)),
                           ("size of g", lambda: os.stat(m / "g").st_size, 4)):
        v, stale_at = wait_for(fn, want, changed)
        assert v == want, f"{what}: still {v!r} {H.DEADLINE:.0f}s after the change"
        assert stale_at is None or stale_at <= VISIBLE_WITHIN, \
            f"{what}: a stat() begun {stale_at:.2f}s after the change still saw the old state"
    assert read(m / "f") == NEW_F
    assert read(m / "g") == "new\n"
    assert sorted(os.listdir(m)) == ["f", "g", "script.sh"]


def change_dir(d):
    def change():
        write(d / "f", NEW_F)
        write(d / "g", "new\n")
    return change


@pytest.mark.parametrize("how", ["share-shared", "no-hint"])
def test_shared_access_sees_lower_changes(mount, layer, tmp_path, how):
    hint = {"share": "shared", "lifecycle": None} if how == "share-shared" else None
    cfg = spec(tmp_path, layer, hint=hint)
    m = mount([layer], f"hints={cfg}")
    sees_changes(m, change_dir(layer))


def test_fuse_lower_defaults_to_shared(mount, layer, tmp_path):
    """A lower layer on a FUSE filesystem (here another memoverlay mount)
    gets shared access without any hints: a change made through the lower
    mount shows through the upper one."""
    a = mount([layer])
    b = mount([a.path])
    sees_changes(b, change_dir(a.path))   # into a's upper: b's lower changes
    mount.unmount(b)


def test_exclusive_access_mounts(mount, layer, tmp_path):
    """share=container + lifecycle=pod: exclusive access; the mount works
    (whether a lower change shows is deliberately not asserted)."""
    cfg = spec(tmp_path, layer, hint={"options": "rw"})
    m = mount([layer], f"hints={cfg}")
    assert read(m / "f") == "one\n"
    write(m / "f", "mine\n")
    assert read(m / "f") == "mine\n"
    assert read(layer / "f") == "one\n"
    assert m.err.read_text().strip() == ""

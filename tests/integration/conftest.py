"""Fixtures for memoverlay integration tests.

Every integration test runs once per build listed in MEMOVERLAY_BUILDS
(colon-separated build directories, relative to the repository root or
absolute; default "build:build-san"; builds without fs/memoverlay are
skipped; none at all is an error). An entry may carry daemon options after
an '@', e.g. "build@io_uring=off,nowriteback" (no ':' in them): a variant of
that build, whose options go into every daemon command line the tests make
(before the test's own options, so a test's word wins) — the fixtures add
them, and tests that start the daemon by hand use Build.cmd / Build.opts.
Test ids name the variant ("build@io_uring=off"). The special build name "kernel" runs the
tests against kernel overlayfs (lowerdir-only) instead of the daemon; that is
only for validating the tests themselves.

The `mount` fixture is a callable: mount(layers, opts="", ...) starts the
daemon the way a user would (no -f: the starter must exit 0 once the mount
serves), and at teardown always unmounts, waits for the daemon to exit,
fails on sanitizer logs and fails unless every lower layer is byte-for-byte
unchanged.
"""

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers as H  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# Hang guards (seconds), generous so that a loaded machine never reaches them.
START_TIMEOUT = float(os.environ.get("MEMOVERLAY_START_TIMEOUT", str(H.DEADLINE)))
EXIT_TIMEOUT = float(os.environ.get("MEMOVERLAY_EXIT_TIMEOUT", str(H.DEADLINE)))
WATCHDOG = float(os.environ.get("MEMOVERLAY_WATCHDOG", "150"))


@dataclass(frozen=True)
class Build:
    name: str
    dir: Path = None
    exe: Path = None
    opts: str = ""      # the variant's daemon options ("" for a plain build)

    @property
    def kernel(self):
        return self.exe is None

    @property
    def sanitized(self):
        return "san" in self.name.split("@")[0]

    @property
    def cmd(self):
        """The daemon's command: the binary, and the variant's -o if any."""
        return [str(self.exe)] + (["-o", self.opts] if self.opts else [])

    @property
    def shell_cmd(self):
        """cmd for a shell script."""
        return shlex.join(self.cmd)

    def with_opts(self, opts=""):
        """OPTS (an -o value) after the variant's options."""
        return ",".join(o for o in (self.opts, opts) if o)


def discover_builds():
    spec = os.environ.get("MEMOVERLAY_BUILDS", "build:build-san")
    found, missing = [], []
    for item in spec.split(":"):
        if not item:
            continue
        if item == "kernel":
            found.append(Build("kernel"))
            continue
        item, _, opts = item.partition("@")
        d = Path(item)
        if not d.is_absolute():
            d = REPO / d
        exe = d / "fs" / "memoverlay"
        suffix = f"@{opts}" if opts else ""
        if exe.is_file() and os.access(exe, os.X_OK):
            found.append(Build(d.name + suffix, d, exe, opts))
        else:
            missing.append(str(exe))
    names = [b.name for b in found]
    if len(set(names)) != len(names):  # same basename twice: use full paths
        found = [Build(str(b.dir) + (f"@{b.opts}" if b.opts else "") if b.dir else b.name,
                       b.dir, b.exe, b.opts) for b in found]
    return found, missing, spec


_BUILDS = None


def builds():
    global _BUILDS
    if _BUILDS is None:
        _BUILDS = discover_builds()
    return _BUILDS


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "memoverlay_only: needs the real daemon (skipped for the 'kernel' reference build)")
    # An ignored signal stays ignored across fork and exec, and libfuse
    # leaves a signal alone that the daemon's starter ignored. Run from a
    # background job (a script's `cmd &` ignores SIGINT), every daemon the
    # tests start would ignore the SIGINT the signal tests send it: give
    # them the default, as an interactive run does.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc):
    if "memoverlay_build" not in metafunc.fixturenames:
        return
    found, missing, spec = builds()
    if not found:
        raise pytest.UsageError(
            f"memoverlay integration tests: no daemon binary found. MEMOVERLAY_BUILDS={spec!r}; "
            f"looked for: {', '.join(missing)}. Build first (meson setup build && ninja -C build).")
    metafunc.parametrize("memoverlay_build", found, ids=[b.name for b in found], scope="session")


@pytest.fixture(autouse=True)
def _per_build(memoverlay_build, request):
    """Makes every test in this directory run once per build."""
    if memoverlay_build.kernel and request.node.get_closest_marker("memoverlay_only"):
        pytest.skip("needs the memoverlay daemon (kernel reference build)")
    return memoverlay_build


# --------------------------------------------------------------------------
# Session safety net

_TMP_ROOTS = set()


def _sweep(prefixes):
    left = []
    for prefix in prefixes:
        for mp in sorted(H.mounts_under(prefix), key=len, reverse=True):
            left.append(mp)
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30)
    return left


def pytest_sessionfinish(session, exitstatus):
    roots = set(_TMP_ROOTS)
    tpf = getattr(session.config, "_tmp_path_factory", None)
    if tpf is not None:
        try:
            roots.add(str(tpf.getbasetemp()))
        except Exception:
            pass
    left = _sweep(roots)
    if left:
        sys.stderr.write(f"\nmemoverlay tests: lazily unmounted leftovers: {left}\n")


# --------------------------------------------------------------------------
# Lower layers


@pytest.fixture
def lowers(tmp_path):
    """lowers(n) -> [top, ..., bottom]: n fresh empty layer directories."""
    count = [0]

    def make(n=1, prefix="l"):
        out = []
        for _ in range(n):
            p = tmp_path / "lower" / f"{prefix}{count[0]}"
            count[0] += 1
            p.mkdir(parents=True)
            out.append(p)
        return out

    return make


# --------------------------------------------------------------------------
# Mounting


class Mounted:
    """A live mount. Path-like: os.stat(m), m / "name"."""

    def __init__(self, path, layers, build, argv, pids, san_dir, out, err):
        self.path = Path(path)
        self.layers = [Path(p) for p in layers]
        self.build = build
        self.argv = argv
        self.pids = pids
        self.san_dir = san_dir
        self.out = out
        self.err = err
        self.snapshots = []   # (layer, records) taken before the mount
        self.timer = None
        self.timed_out = False
        self.watchdog_secs = None
        self.done = False

    def __fspath__(self):
        return str(self.path)

    def __truediv__(self, other):
        return self.path / other

    def __str__(self):
        return str(self.path)

    def __repr__(self):
        return f"Mounted({self.path})"


class MountManager:
    def __init__(self, build, tmp_path):
        self.build = build
        self.tmp = tmp_path
        self.mounts = []
        self.kernels = contextlib.ExitStack()  # kernel overlayfs mounts
        self.extra_mps = []
        self.failures = []
        self.n = 0
        _TMP_ROOTS.add(str(tmp_path))

    # -- helpers ---------------------------------------------------------
    def _new_dir(self, stem):
        self.n += 1
        p = self.tmp / f"{stem}{self.n}"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @staticmethod
    def lowerdir(layers):
        return ":".join(os.fspath(p).replace(":", "\\:") for p in layers)

    def env(self, san_dir):
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = f"log_path={san_dir}/asan:detect_leaks=1"
        env["UBSAN_OPTIONS"] = f"log_path={san_dir}/ubsan:print_stacktrace=1:halt_on_error=1"
        env["LSAN_OPTIONS"] = env.get("LSAN_OPTIONS", "")
        # ThreadSanitizer builds: a race report, not only a crash, fails the test
        env["TSAN_OPTIONS"] = f"log_path={san_dir}/tsan"
        return env

    def argv(self, layers, opts="", mountpoint=None, source=None, args=()):
        lo = "lowerdir=" + self.lowerdir(layers)
        opts = self.build.with_opts(opts)
        if opts:
            lo += "," + opts
        argv = [str(self.build.exe)]
        if source is not None:
            argv.append(source)
        argv += [os.fspath(mountpoint), "-o", lo, *args]
        return argv

    # -- mounting ----------------------------------------------------------
    def __call__(self, layers, opts="", *, mountpoint=None, source=None, args=(),
                 argv=None, env_extra=None, watchdog=WATCHDOG, start_timeout=START_TIMEOUT):
        """Mount LAYERS (top first) and return a Mounted. ARGV, if given,
        replaces the whole command line (for mount.fuse3 etc.)."""
        layers = [Path(p) for p in layers]
        mp = Path(mountpoint) if mountpoint else self._new_dir("mnt")
        mp.mkdir(parents=True, exist_ok=True)
        snaps = [(l, H.tree_records(l)) for l in layers]
        if self.build.kernel:
            return self._kernel_as_daemon(layers, mp, snaps)

        san = self._new_dir("san")
        out = self.tmp / f"daemon{self.n}.out"
        err = self.tmp / f"daemon{self.n}.err"
        if argv is None:
            argv = self.argv(layers, opts, mp, source, args)
        env = self.env(san)
        if env_extra:
            env.update(env_extra)
        m = Mounted(mp, layers, self.build, argv, [], san, out, err)
        m.snapshots = snaps
        self.mounts.append(m)
        try:
            with open(out, "wb") as fo, open(err, "wb") as fe:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                   env=env, timeout=start_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"memoverlay did not exit within {start_timeout}s of starting "
                        f"(it must daemonize once the mount serves): {argv}\n"
                        f"stderr: {err.read_text(errors='replace')}")
        if r.returncode != 0:
            pytest.fail(f"memoverlay exited {r.returncode}: {argv}\n"
                        f"stderr: {err.read_text(errors='replace')}")
        if not H.is_mounted(mp):
            pytest.fail(f"memoverlay exited 0 but {mp} is not mounted: {argv}\n"
                        f"stderr: {err.read_text(errors='replace')}")
        fstypes = [x["fstype"] for x in H.mounts_at(mp)]
        if not any(t == "fuse" or t.startswith("fuse.") for t in fstypes):
            self.failures.append(f"{mp}: mounted, but not as a FUSE filesystem: {fstypes}")
        m.pids = H.daemon_pids(mp)
        if not m.pids:
            self.failures.append(f"{mp}: no memoverlay process with the mountpoint in its "
                                 f"argv is running after start")
        if watchdog:
            m.timer = threading.Timer(watchdog, self._timeout, args=(m, watchdog))
            m.timer.daemon = True
            m.timer.start()
        # The starter exited 0: the mount must already serve requests.
        try:
            os.stat(mp)
            os.listdir(mp)
        except OSError as e:
            pytest.fail(f"memoverlay exited 0 but the mount does not serve: {e!r}")
        return m

    def _kernel_as_daemon(self, layers, mp, snaps):
        self.kernels.enter_context(H.kernel_overlay(layers, mp, scratch=self._new_dir("kovl")))
        m = Mounted(mp, layers, self.build, None, [], None, None, None)
        m.snapshots = snaps
        self.mounts.append(m)
        return m

    def _timeout(self, m, secs):
        m.timed_out = True
        m.watchdog_secs = secs
        for pid in set(m.pids) | set(H.daemon_pids(m.path, resolve=False)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self, args, timeout=START_TIMEOUT, env_extra=None):
        """Run the daemon binary with ARGS (a CLI test); capture output. Any
        mountpoint argument that ends up mounted is unmounted at teardown."""
        san = self._new_dir("san")
        env = self.env(san)
        if env_extra:
            env.update(env_extra)
        argv = [*self.build.cmd, *[os.fspath(a) for a in args]]
        for a in argv[1:]:
            if os.path.isabs(a) and os.path.isdir(a):
                self.extra_mps.append(a)
        self.mounts.append(Mounted(self.tmp, [], self.build, argv, [], san, None, None))
        self.mounts[-1].done = True  # only sanitizer logs are checked for it
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, env=env, timeout=timeout)

    def kernel(self, layers):
        """Kernel overlayfs (lowerdir-only, read-only) of LAYERS: a reference."""
        return self.kernels.enter_context(
            H.kernel_overlay(layers, self._new_dir("kmnt"), scratch=self._new_dir("kovl")))

    # -- teardown ------------------------------------------------------------
    def unmount(self, m):
        """Unmount M now, wait for its daemon, run every check on it."""
        if m.done:
            return
        m.done = True
        if m.timer:
            m.timer.cancel()
        if self.build.kernel:
            H.unmount(m.path)
        else:
            pids = set(m.pids)
            if H.is_mounted(m.path):
                pids |= set(H.daemon_pids(m.path))
                alive_before = [p for p in pids if H.pid_alive(p)]
                if not alive_before and not m.timed_out:
                    self.failures.append(f"{m.path}: the daemon died during the test "
                                         f"(crashed?) — argv {m.argv}")
            H.unmount(m.path)
            if H.is_mounted(m.path):
                self.failures.append(f"{m.path}: still mounted after fusermount3/umount")
            alive = H.wait_pids_gone(pids, EXIT_TIMEOUT)
            if alive:
                for pid in alive:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.failures.append(f"{m.path}: daemon pid(s) {alive} did not exit within "
                                     f"{EXIT_TIMEOUT}s after unmount (killed)")
            if m.timed_out:
                self.failures.append(f"{m.path}: test exceeded the {m.watchdog_secs}s watchdog; "
                                     f"daemon killed (hang?)")
        self._check_san(m)
        for layer, before in m.snapshots:
            after = H.tree_records(layer)
            if after != before:
                self.failures.append(f"lower layer {layer} changed under the mount:\n  " +
                                     "\n  ".join(H.tree_diff(before, after)))

    def _check_san(self, m):
        if not m.san_dir or not os.path.isdir(m.san_dir):
            return
        for f in sorted(os.listdir(m.san_dir)):
            p = os.path.join(m.san_dir, f)
            try:
                txt = open(p, errors="replace").read()
            except OSError as e:
                txt = repr(e)
            if len(txt) > 8000:
                txt = txt[:8000] + "\n...[truncated]"
            self.failures.append(f"sanitizer log {p} (argv {m.argv}):\n{txt}")

    def cleanup(self):
        for m in reversed(self.mounts):
            try:
                if m.done and m.path == self.tmp:
                    self._check_san(m)
                else:
                    self.unmount(m)
            except Exception as e:  # keep cleaning up
                self.failures.append(f"cleanup of {m.path}: {e!r}")
        try:
            self.kernels.close()
        except Exception as e:  # keep cleaning up
            self.failures.append(f"cleanup of kernel overlayfs mounts: {e!r}")
        for mp in self.extra_mps:
            if H.is_mounted(mp):
                pids = H.daemon_pids(mp)
                H.unmount(mp)
                H.wait_pids_gone(pids, EXIT_TIMEOUT)
        for mp in sorted(H.mounts_under(self.tmp), key=len, reverse=True):
            self.failures.append(f"{mp}: left mounted (lazily unmounted)")
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30)


@pytest.fixture
def mount(memoverlay_build, tmp_path):
    mgr = MountManager(memoverlay_build, tmp_path)
    try:
        yield mgr
    finally:
        mgr.cleanup()
    if mgr.failures:
        pytest.fail("\n".join(mgr.failures), pytrace=False)


@pytest.fixture
def drop_caches():
    def drop():
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False
    return drop


@pytest.fixture
def mnt(tmp_path):
    """An empty directory to mount on, for tests that start the daemon by hand."""
    p = tmp_path / "mnt"
    p.mkdir()
    return p


@pytest.fixture
def cgroup():
    """cgroup(LIMIT): a memory cgroup of the test's own, removed after its mounts."""
    made = []

    def make(limit):
        cg = H.MemoryCgroup(limit)
        made.append(cg)
        return cg
    yield make
    for cg in made:   # after the mounts (set up later, torn down first)
        cg.remove()


# --------------------------------------------------------------------------
# A plain user (test_rootless, test_upperdir, test_podman)


@pytest.fixture
def user():
    """The plain test user (made if missing), with /dev/fuse 0666 as
    distributions ship it for the test (its mode restored afterwards)."""
    if not shutil.which("fusermount3"):
        pytest.skip("fusermount3 not installed")
    fuse_mode = os.stat("/dev/fuse").st_mode & 0o7777
    uid, gid, home = H.ensure_test_user()
    yield SimpleNamespace(uid=uid, gid=gid, home=home, prefix=H.as_user(uid, gid))
    if os.stat("/dev/fuse").st_mode & 0o7777 != fuse_mode:
        os.chmod("/dev/fuse", fuse_mode)


@pytest.fixture
def scratch(user):
    """A directory the test user owns (0755), cleaned up afterwards; any
    mount or daemon the test left behind is a failure."""
    with H.shared_tmpdir("mo-rootless.", owner=(user.uid, user.gid)) as (d, left):
        yield d
    if left:
        pytest.fail(f"left behind (cleaned up now): {left}")


@pytest.fixture
def setup(memoverlay_build, user, scratch):
    return H.UserSetup(memoverlay_build, user, scratch)

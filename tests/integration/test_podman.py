"""podman and buildah with memoverlay as their mount program (issue 14),
the real tools from Debian 12 (podman 4.3, buildah 1.28, runc), as root
and rootless (the plain test user with subordinate ids), each scenario run
twice -- with memoverlay and with fuse-overlayfs as
`overlay.mount_program` -- and what a user sees compared:

- `podman run` writing files (new, appended, deleted, a lower directory
  replaced by a new one, modes, owners, links, a fifo); `podman start`
  of the exited container sees them; `podman stop`/`start` keeps what a
  detached container and an `exec` wrote; `podman cp` into a created
  container, then `start`, sees the file; `run --rm` (volatile, seen in
  the mount program's options); rootless, `run --userns=keep-id`, where
  containers/storage has the mount program shift the image's owners
  (uidmapping=/gidmapping=);
- `podman diff`, `podman commit` (the new layer's tar, with its
  whiteouts) and `podman export` of the stopped container;
- `buildah bud` with three RUN steps, with and without `--layers`, and
  `buildah from/run/copy/run/commit`, each step seeing the previous one
  (the image layers' tars compared);
- the image's layer directory is never changed by any of it.

containers/storage mounts with `upperdir=`, `workdir=` (and `volatile` for
`run --rm` and buildah's containers), unmounts and mounts again between
every step, and reads the changes by mounting (the naive diff of a mount
program), so each step relies on the write-back of the last.

The image is a static busybox (no registry is reachable), imported with
`podman import`. Everything -- storage (`--root/--runroot/--tmpdir`),
containers.conf (runc: crun fails on hybrid cgroups here; rlimits root may
set without CAP_SYS_RESOURCE), storage.conf, registries.conf, HOME,
XDG_RUNTIME_DIR -- lives in the test's own directory; the machine's
containers configuration and storage are never used (root's podman runs
in a mount namespace of the test's own, for the two paths it takes from
the machine whatever it is told: NS_HOLDER). Teardown removes the
containers and images, stops podman's rootless pause process and any
daemon left, and unmounts what is left below the directory.

The fuse-overlayfs results do not depend on the memoverlay build: they
are made once per session and compared with every build's."""

import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

import helpers as H

pytestmark = pytest.mark.memoverlay_only

BUSYBOX = "/bin/busybox"
TOOLS = ("podman", "buildah", "runc", "fuse-overlayfs", "newuidmap")
TIMEOUT = 240          # one podman/buildah command, on a loaded machine


def _missing_tools():
    miss = [t for t in TOOLS if not shutil.which(t, path="/usr/bin:/usr/sbin:/bin:/sbin")]
    if not os.path.isfile(BUSYBOX):
        miss.append(BUSYBOX + " (busybox-static)")
    return miss


@pytest.fixture(autouse=True)
def _tools():
    miss = _missing_tools()
    if miss:
        pytest.skip(f"not installed: {', '.join(miss)} (tools/install-deps.sh installs them)")


# --------------------------------------------------------------------------
# The image: a static busybox, its symlinks, a few files to change


@pytest.fixture(scope="session")
def busybox_tar():
    d = Path(tempfile.mkdtemp(prefix="mo-podman-image.", dir="/tmp"))
    os.chmod(d, 0o755)
    root = d / "rootfs"
    for sub in ("bin", "etc", "root", "tmp", "proc", "sys", "dev", "opt/lowdir", "var"):
        (root / sub).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    names = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                           check=True).stdout.split()
    # applets as symlinks, as busybox --install -s makes them, but two as
    # hard links, as the busybox image has them all: /bin/vi is removed
    # below, which must write its whiteout alone (kernel overlayfs and
    # fuse-overlayfs do not copy the file up under its other names)
    for n in names:
        if n in ("ash", "vi"):
            os.link(root / "bin/busybox", root / "bin" / n)
        elif n != "busybox":
            os.symlink("busybox", root / "bin" / n)
    H.write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/:/bin/false\n")
    H.write(root / "etc/group", "root:x:0:\nnobody:x:65534:\n")
    H.write(root / "etc/motd", "image motd\n")
    H.write(root / "etc/doomed", "to be deleted\n")
    H.write(root / "opt/lowdir/a", "a\n")
    H.write(root / "opt/lowdir/b", "b\n")
    H.write(root / "opt/keep", "keep\n", mode=0o644)
    tar = d / "busybox.tar"
    subprocess.run(["tar", "-C", root, "--numeric-owner", "--owner=0", "--group=0",
                    "-cf", tar, "."], check=True)
    os.chmod(tar, 0o644)
    yield tar
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# One engine: podman and buildah on a storage of the test's own


# The engine's settings, and the mount namespace root's podman needs for
# the two paths it takes from the machine whatever it is told, are the
# bench's podman row's too: one copy, in bench/lib/podman.py.
_spec = importlib.util.spec_from_file_location(
    "bench_podman", Path(__file__).resolve().parents[2] / "bench" / "lib" / "podman.py")
_bench_podman = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_podman)
CONTAINERS_CONF = _bench_podman.CONTAINERS_CONF


class Engine:
    """podman and buildah with MOUNT_PROGRAM, everything below D; as root
    (in a mount namespace of the engine's own: NS_HOLDER), or as USER (a
    SimpleNamespace with uid, gid) when given."""

    def __init__(self, d, mount_program, user=None, san=None, mountopt=""):
        self.d, self.mp, self.user, self.san = Path(d), str(mount_program), user, san
        self.root, self.run_root = self.d / "root", self.d / "run"
        self.tmp, self.home, self.xdg = self.d / "tmp", self.d / "home", self.d / "xdg"
        for p in (self.tmp, self.home, self.xdg, self.d / "net", self.d / "host"):
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(self.xdg, 0o700)
        H.write(self.d / "containers.conf", CONTAINERS_CONF.format(d=self.d))
        H.write(self.d / "storage.conf", f'[storage]\ndriver = "overlay"\n'
                f'runroot = "{self.run_root}"\ngraphroot = "{self.root}"\n'
                f'[storage.options.overlay]\nmount_program = "{self.mp}"\n')
        H.write(self.d / "registries.conf", "unqualified-search-registries = []\n")
        H.write(self.d / "policy.json", '{"default": [{"type": "insecureAcceptAnything"}]}\n')
        H.write(self.home / ".config/containers/policy.json", (self.d / "policy.json").read_text())
        self.root_ns = None
        if not user:
            try:
                self.root_ns = _bench_podman.RootNamespace(self.d)
            except _bench_podman.Failed as e:
                pytest.fail(str(e))
        if user:
            for p in [self.d, *self.d.rglob("*")]:
                os.lchown(p, user.uid, user.gid)
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.xdg),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local/share"),
            "TMPDIR": str(self.tmp), "LANG": "C",
            "CONTAINERS_CONF": str(self.d / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.d / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.d / "registries.conf"),
        }
        if san:  # a sanitized memoverlay started by podman writes its logs here
            self.env["ASAN_OPTIONS"] = f"log_path={san}/asan:detect_leaks=1:fast_unwind_on_malloc=0"
            self.env["UBSAN_OPTIONS"] = f"log_path={san}/ubsan:print_stacktrace=1:halt_on_error=1"
        self.storage = ["--root", str(self.root), "--runroot", str(self.run_root),
                        "--storage-driver", "overlay",
                        "--storage-opt", f"overlay.mount_program={self.mp}"]
        self.added = {o.split("=")[0] for o in mountopt.split(",") if o}
        if mountopt:  # appended to the options of every mount
            self.storage += ["--storage-opt", f"overlay.mountopt={mountopt}"]

    def mounts(self):
        """Mount points below D, in the engine's mount namespace."""
        pid = self.root_ns.pid if self.root_ns else "self"
        prefix = str(self.d) + "/"
        try:
            return [m["mountpoint"] for m in H.mountinfo(pid)
                    if m["mountpoint"].startswith(prefix)]
        except OSError:
            return []

    def _run(self, argv, check, input):
        prefix = H.as_user(self.user.uid, self.user.gid) if self.user else self.root_ns.enter
        r = subprocess.run(prefix + argv, capture_output=True, text=True, env=self.env,
                           cwd=self.d, timeout=TIMEOUT, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            pytest.fail(f"{' '.join(argv[:1] + argv[len(self.storage) + 1:])} "
                        f"(mount program {self.mp}, {'rootless' if self.user else 'root'}) "
                        f"exited {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
                        f"stderr: {r.stderr[-3000:]}", pytrace=False)
        return r

    def sh(self, script):
        """SCRIPT's output, run where the engine's mounts are."""
        return self._run(["/bin/sh", "-ec", script], True, None).stdout

    def podman(self, *args, check=True, input=None):
        return self._run(["podman", *self.storage, "--tmpdir", str(self.tmp),
                          "--cgroup-manager", "cgroupfs", *map(str, args)], check, input)

    def buildah(self, *args, check=True):
        return self._run(["buildah", *self.storage, *map(str, args)], check, None)

    def mount_options(self, container):
        """The option names (values left out: paths differ) of the mount
        program serving CONTAINER, running, as one sorted list per daemon
        (not those of other containers, still writing back)."""
        merged = self.podman("inspect", "--format", "{{.GraphDriver.Data.MergedDir}}",
                             container).stdout.strip()
        exe = os.path.basename(self.mp)
        found = {}
        for pid in _processes_under(self.d):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) == exe and "-o" in argv and merged in argv:
                found[pid] = argv
        if exe == "memoverlay":  # not its mo-unmounter child, named or not yet
            found = {p: a for p, a in found.items() if p in H.main_daemon_pids(list(found))}
        out = []
        for pid, argv in found.items():
            opts = argv[argv.index("-o") + 1].split(",")
            # without the words a variant adds (fuse-overlayfs has none)
            out.append(sorted({o.split("=")[0] for o in opts} - self.added - {""}))
            if self.san:  # sanitizer logs reach the test, through podman
                env = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
                assert f"log_path={self.san}/asan" in env, f"daemon {pid}: {env[:2000]}"
        return sorted(out)

    def host_file(self, name, text):
        p = self.d / "host" / name
        H.write(p, text)
        if self.user:
            os.chown(p, self.user.uid, self.user.gid)
        return p

    def import_image(self, tar):
        self.podman("import", tar, "localhost/bb:1")
        upper = self.podman("image", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}",
                            "localhost/bb:1").stdout.strip()
        return Path(upper)

    def layer_listings(self, image, skip=1):
        """The layers of IMAGE below its first SKIP (the base), each as
        tar_listing(): via `podman save` (docker-archive: plain tars)."""
        out = self.d / "host" / f"save-{image.replace('/', '_').replace(':', '_')}.tar"
        self.podman("save", "--format", "docker-archive", "-o", out, image)
        with tarfile.open(out) as t:
            manifest = json.load(t.extractfile("manifest.json"))
            layers = manifest[0]["Layers"]
            return [tar_listing(t.extractfile(name).read()) for name in layers[skip:]]

    def cleanup(self):
        """Containers and images away, podman's pause process (rootless)
        stopped, daemons left behind ended, mounts below D gone."""
        self.podman("rm", "-a", "-f", "-t", "0", check=False)
        self.buildah("rm", "--all", check=False)
        self.podman("rmi", "-a", "-f", check=False)
        pause = self.tmp / "pause.pid"
        for pidfile in (pause, self.xdg / "libpod/tmp/pause.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        left = _processes_under(self.d)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            left = H.wait_pids_gone(left, H.DEADLINE if sig == signal.SIGTERM else 10)
        ns = self.root_ns.enter if self.root_ns else []
        for mp in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(ns + ["umount", "-l", mp], capture_output=True, timeout=30)
        if self.root_ns:
            self.root_ns.end()


def _processes_under(d):
    """Processes whose argv mentions a path under D (mount programs,
    conmon, podman's leftovers), not this one."""
    prefix = os.fspath(d).rstrip("/") + "/"
    return [pid for pid, argv in H.proc_cmdlines()
            if pid != os.getpid() and any(prefix in a for a in argv) and H.pid_alive(pid)]


def _member_name(name):
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/") or "."


def tar_listing(data):
    """What a tar holds, without times: {name: (type, mode, uid, gid, size,
    link target or content digest, device)}; hard links are recorded as
    their target's content and as one group (which name a writer takes as
    the file and which as the link follows readdir order, which differs
    between overlays)."""
    out, groups = {}, {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
        digests = {}
        for m in members:
            name = _member_name(m.name)
            if m.isfile():
                digests[name] = hashlib.sha256(t.extractfile(m).read()).hexdigest()[:16]
        for m in members:
            name = _member_name(m.name)
            if m.islnk():
                target = _member_name(m.linkname)
                groups.setdefault(target, {target}).add(name)
                kind, extra = "file", digests.get(target)
            elif m.issym():
                kind, extra = "symlink", m.linkname
            elif m.isfile():
                kind, extra = "file", digests[name]
            elif m.isdir():
                kind, extra = "dir", None
            elif m.ischr() or m.isblk():
                kind, extra = "chr" if m.ischr() else "blk", (m.devmajor, m.devminor)
            elif m.isfifo():
                kind, extra = "fifo", None
            else:
                kind, extra = str(m.type), None
            size = m.size if kind == "file" and not m.islnk() else None
            out[name] = (kind, oct(m.mode & 0o7777), m.uid, m.gid, size, extra)
    for target, names in groups.items():
        sizes = {out[n][4] for n in names if out[n][4] is not None}
        for n in names:  # one group, every name with the file's size
            k, mode, uid, gid, _, extra = out[n]
            out[n] = (k, mode, uid, gid, next(iter(sizes), None), extra)
    return {"entries": out, "hardlinks": sorted(sorted(g) for g in groups.values())}


# --------------------------------------------------------------------------
# The scenarios: each returns what a user sees, to compare


WRITE = r"""
set -e
if [ -e /stamp ]; then echo again; else
echo hello > /root/new
echo appended >> /etc/motd
rm /etc/doomed /bin/vi
rm -r /opt/lowdir; mkdir /opt/lowdir; echo c > /opt/lowdir/c
mkdir -p /data/sub; echo f > /data/sub/f; chown 1234:5678 /data/sub/f
chmod 600 /opt/keep
ln -s ../root/new /data/link; ln /root/new /data/hard
mkfifo /data/fifo
i=0; while [ $i -lt 4096 ]; do printf "%255d\n" $i; i=$((i+1)); done > /data/big
md5sum /data/big | cut -c1-32 > /root/md5
touch /stamp
fi
cd / && find root etc opt data bin/vi -print 2>&1 | sort
cat /etc/motd /data/hard /root/new
ls -ln /data/sub /opt | sed 's/  */ /g' | cut -d' ' -f1,3,4,5,9
"""

STOP_START = r"""echo started >> /root/log; exec sleep 600"""


def podman_scenarios(e, tar):
    seen = {}
    image_layer = e.import_image(tar)
    image_before = H.tree_records(image_layer)
    # run, and the exited container started again
    seen["run"] = e.podman("run", "--name", "w", "--network", "none", "localhost/bb:1",
                           "sh", "-c", WRITE).stdout
    seen["start again"] = e.podman("start", "-a", "w").stdout
    # stop/start of a detached container, with what exec wrote
    e.podman("run", "-d", "--name", "s", "--network", "none", "localhost/bb:1",
             "sh", "-c", STOP_START)
    e.podman("exec", "s", "sh", "-c", "n=0; until grep -q started /root/log || [ $n = 1200 ]; do"
             " sleep 0.1; n=$((n+1)); done; echo exec > /root/x")
    e.podman("stop", "-t", "0", "s")
    e.podman("start", "s")
    seen["mount options"] = e.mount_options("s")
    seen["stop/start"] = e.podman(
        "exec", "s", "sh", "-c",
        "n=0; until [ $(grep -c started /root/log) = 2 ] || [ $n = 1200 ]; do"
        " sleep 0.1; n=$((n+1)); done; cat /root/log /root/x").stdout
    e.podman("stop", "-t", "0", "s")
    # cp into a created container, then start; cp out of an exited one
    e.podman("create", "--name", "c", "--network", "none", "localhost/bb:1",
             "sh", "-c", "cat /root/copied; ls -ln /root/copied | cut -c1-10")
    e.podman("cp", e.host_file("copied", "from the host\n"), "c:/root/copied")
    seen["cp then start"] = e.podman("start", "-a", "c").stdout
    out = e.d / "host" / "out"
    e.podman("cp", "w:/root/md5", out)
    seen["cp out"] = out.read_text()
    # run --rm: volatile
    e.podman("run", "-d", "--rm", "--name", "v", "--network", "none", "localhost/bb:1",
             "sh", "-c", "echo v > /v; exec sleep 600")
    seen["run --rm mount options"] = e.mount_options("v")
    seen["run --rm"] = e.podman("exec", "v", "sh", "-c", "n=0; until [ -s /v ] || [ $n = 1200 ];"
                                " do sleep 0.1; n=$((n+1)); done; sync; cat /v; ls /").stdout
    e.podman("stop", "-t", "0", "v")
    # diff, commit, export of the stopped container
    seen["diff"] = sorted(e.podman("diff", "w").stdout.splitlines())
    e.podman("commit", "w", "localhost/w:1")
    seen["commit layer"] = e.layer_listings("localhost/w:1")
    exp = e.d / "host" / "export.tar"
    e.podman("export", "-o", exp, "w")
    seen["export"] = tar_listing(exp.read_bytes())
    seen["run committed"] = e.podman("run", "--rm", "--network", "none", "localhost/w:1",
                                     "sh", "-c", "cat /root/new /etc/motd; ls /opt/lowdir; "
                                     "test ! -e /bin/vi").stdout
    if not e.user:
        # an image mounted by itself: lowerdir= only (fuse-overlayfs says
        # EROFS to a write there, memoverlay keeps it in memory: its
        # upper without upperdir=; either way no layer changes)
        m = e.podman("image", "mount", "localhost/bb:1").stdout.strip()
        seen["image mount"] = e.sh(f"cd {m} && ls -A . bin | wc -l && cat etc/motd && "
                                   f"ls -ln opt | cut -c1-10; touch {m}/x 2>/dev/null || true")
        e.podman("image", "umount", "localhost/bb:1")
    if e.user:
        # --userns=keep-id: the container's ids are not storage's, and
        # containers/storage has the mount program shift the image
        # (uidmapping=:0:1:1001:1001:0:1:1002:1002:64535 for uid 1001)
        seen["keep-id run"] = e.podman("run", "--name", "k", "--userns=keep-id", "--network",
                                       "none", "localhost/bb:1", "sh", "-c", KEEP_ID).stdout
        seen["keep-id start"] = e.podman("start", "-a", "k").stdout
        seen["keep-id diff"] = sorted(e.podman("diff", "k").stdout.splitlines())
        e.podman("commit", "k", "localhost/k:1")
        seen["keep-id commit layer"] = e.layer_listings("localhost/k:1")
    e.podman("rm", "-a", "-f", "-t", "0")
    return seen, (image_layer, image_before)


KEEP_ID = r"""
id -u; id -g
[ -e /tmp/mine ] || { echo mine > /tmp/mine; mkdir /tmp/d; echo f > /tmp/d/f; }
ls -lnd / /bin /opt/keep /opt/lowdir /tmp/mine /tmp/d /tmp/d/f | sed 's/  */ /g' | cut -d' ' -f1,3,4,9
cat /opt/keep /tmp/mine
"""


CONTAINERFILE = """\
FROM localhost/bb:1
RUN echo one > /one && mkdir /d && echo a > /d/a && echo OUT: step1 $(ls /)
RUN cat /one > /two && rm /bin/vi /etc/doomed && echo b >> /d/a && echo OUT: step2 $(cat /d/a)
RUN cat /two /d/a > /three && rm -r /d /opt/lowdir && echo OUT: step3 $(cat /three)
"""


def buildah_scenarios(e, tar):
    seen = {}
    image_layer = e.import_image(tar)
    image_before = H.tree_records(image_layer)
    ctx = e.d / "host" / "ctx"
    e.host_file("ctx/Containerfile", CONTAINERFILE)
    if e.user:
        os.chown(ctx, e.user.uid, e.user.gid)
    for flag, tag in (("--layers=false", "localhost/bud:1"), ("--layers", "localhost/bud:2")):
        r = e.buildah("bud", flag, "--network", "none", "--pull-never", "-t", tag, ctx)
        seen[f"bud {flag}"] = [ln for ln in r.stdout.splitlines() if ln.startswith("OUT:")]
        seen[f"bud {flag} layers"] = e.layer_listings(tag)
    seen["bud run"] = e.podman("run", "--rm", "--network", "none", "localhost/bud:2", "sh", "-c",
                               "cat /three; ls / /opt; test ! -e /bin/vi").stdout
    ctr = e.buildah("from", "--pull-never", "localhost/bb:1").stdout.strip()
    steps = [
        ("run", ctr, "sh", "-c", "echo 1 > /s1; rm /etc/motd; mkdir /sd; echo x > /sd/x"),
        ("copy", ctr, e.host_file("s2", "two\n"), "/s2"),
        ("run", ctr, "sh", "-c", "cat /s1 /s2 > /s3; cat /s3; rm /bin/vi; ls /sd /etc"),
    ]
    seen["from/run/copy/run"] = []
    for step in steps:
        args = [step[0], *(["--network", "none"] if step[0] == "run" else []), *step[1:]]
        seen["from/run/copy/run"].append(e.buildah(*args).stdout)
    e.buildah("commit", ctr, "localhost/b2:1")
    e.buildah("rm", ctr)
    seen["from/run/copy/run/commit layer"] = e.layer_listings("localhost/b2:1")
    return seen, (image_layer, image_before)


# --------------------------------------------------------------------------
# Running a scenario with each mount program


@pytest.fixture
def subids(user):
    """Subordinate ids for the test user in /etc/subuid and /etc/subgid
    (what rootless podman needs; added if missing, the files restored)."""
    saved = {}
    for f in ("/etc/subuid", "/etc/subgid"):
        try:
            text = open(f).read()
        except FileNotFoundError:
            text = None
        saved[f] = text
        lines = (text or "").splitlines()
        if not any(ln.split(":")[0] in ("mo_test", str(user.uid)) for ln in lines):
            with open(f, "a") as fh:
                fh.write(f"mo_test:{200000}:65536\n")
    yield user
    for f, text in saved.items():
        if text is None:
            os.unlink(f)
        elif open(f).read() != text:
            with open(f, "w") as fh:
                fh.write(text)


_REFERENCE = {}   # (scenario, mode) -> fuse-overlayfs results, once per session


def _engine_run(scenario, mount_program, tar, user, san=None, mountopt=""):
    d = Path(tempfile.mkdtemp(prefix="mo-podman.", dir="/tmp"))
    os.chmod(d, 0o755)
    e = Engine(d, mount_program, user, san, mountopt)
    try:
        seen, (layer, before) = scenario(e, tar)
        after = H.tree_records(layer)
        assert after == before, (f"the image layer {layer} changed ({mount_program}):\n  " +
                                 "\n  ".join(H.tree_diff(before, after)))
        return seen
    finally:
        try:
            e.cleanup()
        finally:
            shutil.rmtree(d, ignore_errors=True)


def _compare(ref, got, what):
    diffs = []
    for k in ref:
        if ref[k] != got.get(k):
            diffs.append(f"--- {k}: fuse-overlayfs vs memoverlay\n" +
                         H.unified(_lines(ref[k]), _lines(got.get(k)), "fuse-overlayfs",
                                   "memoverlay"))
    assert not diffs, f"{what}: memoverlay differs from fuse-overlayfs\n" + "\n".join(diffs)


def _lines(v):
    if isinstance(v, str):
        return v.splitlines()
    if isinstance(v, dict) and "entries" in v:
        return [f"{n} {e}" for n, e in sorted(v["entries"].items())] + \
            [f"hardlinks {g}" for g in v["hardlinks"]]
    if isinstance(v, list):
        return [ln for x in v for ln in (_lines(x) + ["--"])]
    return [repr(v)]


def _run_both(memoverlay_build, scenario, tar, user, san):
    mode = "rootless" if user else "root"
    key = (scenario.__name__, mode)
    if key not in _REFERENCE:
        _REFERENCE[key] = _engine_run(scenario, shutil.which("fuse-overlayfs"), tar, user)
    # a variant's options (build@io_uring=off) reach the daemon as
    # containers/storage's overlay.mountopt
    got = _engine_run(scenario, memoverlay_build.exe, tar, user, san, memoverlay_build.opts)
    _compare(_REFERENCE[key], got, f"{scenario.__name__} ({mode})")
    logs = H.san_logs(san)
    assert not logs, "\n".join(logs)
    return got


@pytest.fixture
def san_dir():
    d = Path(tempfile.mkdtemp(prefix="mo-podman-san.", dir="/tmp"))
    os.chmod(d, 0o777)   # the daemon may run as the user namespace's root
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _check_podman(seen):
    run = seen["run"]
    assert "data/sub/f" in run and "opt/lowdir/c" in run and "bin/vi" in run \
        and "No such file" in run, run
    assert "image motd\nappended\nhello\nhello\n" in run, run
    assert seen["start again"].startswith("again\n")
    assert seen["start again"].splitlines()[1:] == run.splitlines(), \
        "the exited container, started again, sees other files"
    assert seen["stop/start"] == "started\nstarted\nexec\n"
    assert seen["cp then start"] == "from the host\n-rw-r--r--\n"
    assert len(seen["cp out"].strip()) == 32
    assert seen["run --rm"].startswith("v\n")
    for opts in seen["mount options"]:
        assert {"lowerdir", "upperdir", "workdir"} <= set(opts), opts
    assert seen["mount options"] and seen["run --rm mount options"]
    assert all("volatile" in o for o in seen["run --rm mount options"]), \
        seen["run --rm mount options"]
    for line in ("A /data/sub/f", "D /bin/vi", "D /etc/doomed", "C /etc/motd", "A /root/new",
                 "A /opt/lowdir/c", "A /stamp"):
        assert line in seen["diff"], seen["diff"]
    layer, = seen["commit layer"]
    ent = layer["entries"]
    assert ent["bin/.wh.vi"][0] == "file" and ent["etc/.wh.doomed"][0] == "file", sorted(ent)
    assert "bin/busybox" not in ent and "bin/ash" not in ent, sorted(ent)
    assert ent["data/sub/f"][2:4] == (1234, 5678) and ent["opt/keep"][1] == "0o600"
    assert ent["data/fifo"][0] == "fifo" and ent["data/link"] == \
        ("symlink", "0o777", 0, 0, None, "../root/new")
    assert ["data/hard", "root/new"] in layer["hardlinks"], layer["hardlinks"]
    assert "opt/lowdir/.wh..wh..opq" in ent or "opt/lowdir/.wh.a" in ent, sorted(ent)
    if "keep-id run" in seen:
        lines = seen["keep-id run"].splitlines()
        uid = lines[0]
        assert uid != "0" and lines[1] == uid, seen["keep-id run"]
        assert "-rw-r--r-- 0 0 /opt/keep" in lines and "drwxr-xr-x 0 0 /bin" in lines and \
            f"-rw-r--r-- {uid} {uid} /tmp/mine" in lines, \
            "the image shows its owners and the container's user owns what it wrote:\n" + \
            seen["keep-id run"]
        assert seen["keep-id start"] == seen["keep-id run"]
        assert "A /tmp/mine" in seen["keep-id diff"]
        ent = seen["keep-id commit layer"][0]["entries"]
        assert ent["tmp/mine"][2:4] == (int(uid), int(uid)) and ent["tmp/d/f"][2] == int(uid)
    exp = seen["export"]["entries"]
    assert "bin/vi" not in exp and "etc/doomed" not in exp and "opt/lowdir/a" not in exp
    assert exp["data/big"][4] == 1 << 20 and exp["bin/sh"][0] == "symlink"
    assert ["bin/ash", "bin/busybox"] in seen["export"]["hardlinks"], seen["export"]["hardlinks"]
    assert seen["run committed"] == "hello\nimage motd\nappended\nc\n"


def _check_buildah(seen):
    for flag, nlayers in (("--layers=false", 1), ("--layers", 3)):
        assert seen[f"bud {flag}"] == [
            "OUT: step1 bin d dev etc one opt proc root run sys tmp var"
            if "run" in seen[f"bud {flag}"][0] else seen[f"bud {flag}"][0],
            "OUT: step2 a b", "OUT: step3 one a b"], seen[f"bud {flag}"]
        layers = seen[f"bud {flag} layers"]
        assert len(layers) == nlayers, [sorted(x["entries"]) for x in layers]
        top = layers[-1]["entries"]
        assert "opt/.wh.lowdir" in top and ("d" not in top or nlayers == 1), sorted(top)
        if nlayers == 3:
            assert "bin/.wh.vi" in layers[1]["entries"] and ".wh.d" in top
    assert seen["bud run"].startswith("one\na\nb\n")
    runs = seen["from/run/copy/run"]
    assert runs[2].startswith("1\ntwo\n") and "x" in runs[2] and "motd" not in runs[2], runs
    layer, = seen["from/run/copy/run/commit layer"]
    ent = layer["entries"]
    for name in ("s1", "s2", "s3", "sd/x", "etc/.wh.motd", "bin/.wh.vi"):
        assert name in ent, (name, sorted(ent))


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_podman(memoverlay_build, busybox_tar, san_dir, request, rootless):
    user = request.getfixturevalue("subids") if rootless else None
    seen = _run_both(memoverlay_build, podman_scenarios, busybox_tar, user, san_dir)
    _check_podman(seen)


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_buildah(memoverlay_build, busybox_tar, san_dir, request, rootless):
    user = request.getfixturevalue("subids") if rootless else None
    seen = _run_both(memoverlay_build, buildah_scenarios, busybox_tar, user, san_dir)
    _check_buildah(seen)

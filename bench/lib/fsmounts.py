"""Mounting the filesystems under test, side by side, and never leaving one behind.

Every filesystem offers mount() -> root path and umount(); FUSE daemons are run
in the foreground (-f) as our own children so we know their pid (for RSS and fd
counts) and can end exactly the processes we started.
"""
import copy
import os
import signal
import subprocess
import time

FS_ORDER = ["tmpfs", "kernel-overlay", "fuse-overlayfs", "unionfs-fuse", "memoverlay"]


def _run(argv, check=True):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def mountpoints_under(prefix):
    """Mount points at or below prefix, in mount order (parents first)."""
    prefix = os.path.realpath(prefix)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                out.append(mp)
    return out


def is_mounted(path):
    return os.path.realpath(path) in mountpoints_under(path)


def force_umount(mp, fuse=False):
    """Unmount one mount point, escalating: normal, retried, then lazy."""
    for attempt in range(10):
        if not is_mounted(mp):
            return True
        if fuse:
            p = _run(["fusermount3", "-u", mp], check=False)
        else:
            p = _run(["umount", mp], check=False)
        if p.returncode == 0:
            return True
        time.sleep(0.2)
    if fuse:
        _run(["fusermount3", "-uz", mp], check=False)
    _run(["umount", "-l", mp], check=False)
    return not is_mounted(mp)


def umount_all_under(prefix):
    """Unmount everything under prefix, deepest/latest first. Returns leftovers."""
    for mp in reversed(mountpoints_under(prefix)):
        force_umount(mp, fuse=True) or force_umount(mp)
    return mountpoints_under(prefix)


class Mounted:
    """Base: one filesystem kind. mount() returns the root to benchmark in."""
    name = "?"
    fuse = False

    def __init__(self, ctx):
        self.ctx = ctx
        self.mnt = os.path.join(ctx.mntdir, self.name)
        self.upper = os.path.join(ctx.mntdir, self.name + "-upper")
        self.proc = None
        self.errlog = None
        self.user = None  # a pwd entry: the daemon runs as this plain user (as_user())

    def runner(self):
        """argv prefix that runs a command as this filesystem's user ([] for root)."""
        if self.user is None:
            return []
        return ["setpriv", "--reuid=%d" % self.user.pw_uid, "--regid=%d" % self.user.pw_gid,
                "--init-groups", "--"]

    def _give_to_user(self, path):
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _tmpfs_upper(self):
        os.makedirs(self.upper, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", self.upper])
        for d in ("upper", "work"):
            os.mkdir(os.path.join(self.upper, d))
            self._give_to_user(os.path.join(self.upper, d))

    def _spawn(self, argv):
        """Start a FUSE daemon in the foreground and wait until it is mounted."""
        os.makedirs(self.mnt, exist_ok=True)
        self._give_to_user(self.mnt)  # fusermount3 mounts only where the user may write
        argv = self.runner() + argv
        self.errlog = open(os.path.join(self.ctx.logdir, self.name + ".log"), "a+")
        self.errlog.write("\n$ %s\n" % " ".join(argv))
        self.errlog.flush()
        start = self.errlog.tell()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.errlog,
                                     stderr=self.errlog, start_new_session=True)
        self.ctx.pids.add(self.proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if is_mounted(self.mnt):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.errlog.seek(start)
        tail = " ".join(self.errlog.read().split())[-400:]
        self.umount()
        raise RuntimeError("%s did not mount: %s" % (self.name, tail or "timeout"))

    def _stop_daemon(self):
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.ctx.pids.discard(self.proc.pid)
        self.proc = None
        if self.errlog:
            self.errlog.close()
            self.errlog = None

    def umount(self):
        if is_mounted(self.mnt):
            force_umount(self.mnt, fuse=self.fuse)
        self._stop_daemon()
        if is_mounted(self.upper):
            force_umount(self.upper)


class Tmpfs(Mounted):
    """A copy of the lower set on tmpfs, made once per run (the in-memory limit).
    'Fresh' per workload = remove whatever the workload added, restore git index."""
    name = "tmpfs"

    def prepare(self):
        os.makedirs(self.mnt, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", self.mnt])
        _run(["cp", "-a", self.ctx.lower + "/.", self.mnt + "/"])
        self.base_entries = set(os.listdir(self.mnt))

    def mount(self):
        return self.mnt

    def umount(self):
        # reset state instead of unmounting: drop new top-level entries,
        # restore what a workload may have rewritten in the copy
        if not is_mounted(self.mnt):
            return
        for e in set(os.listdir(self.mnt)) - self.base_entries:
            _run(["rm", "-rf", os.path.join(self.mnt, e)], check=False)
        src = os.path.join(self.ctx.lower, "repo", ".git", "index")
        if os.path.exists(src):
            _run(["cp", "-a", src, os.path.join(self.mnt, "repo", ".git", "index")], check=False)

    def teardown(self):
        if is_mounted(self.mnt):
            force_umount(self.mnt)


class KernelOverlay(Mounted):
    name = "kernel-overlay"

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        self._tmpfs_upper()
        _run(["mount", "-t", "overlay", "overlay", "-o",
              "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (self.ctx.lower, self.upper, self.upper),
              self.mnt])
        return self.mnt


class FuseOverlayfs(Mounted):
    name = "fuse-overlayfs"
    fuse = True

    def mount(self):
        self._tmpfs_upper()
        self._spawn(["fuse-overlayfs", "-f", "-o",
                     "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (self.ctx.lower, self.upper, self.upper),
                     self.mnt])
        return self.mnt


class UnionfsFuse(Mounted):
    name = "unionfs-fuse"
    fuse = True

    def mount(self):
        self._tmpfs_upper()
        self._spawn(["unionfs", "-f", "-o", "cow,allow_other",
                     "%s/upper=RW:%s=RO" % (self.upper, self.ctx.lower), self.mnt])
        return self.mnt


class Memoverlay(Mounted):
    name = "memoverlay"
    fuse = True

    def __init__(self, ctx, name=None, binary=None, opts=None):
        """A variant (bench/run --variant) has its own name, binary and options."""
        if name:
            self.name = name
        super().__init__(ctx)
        self.binary = binary or ctx.memoverlay
        self.opts = ctx.memoverlay_opts if opts is None else opts

    def mount(self):
        opts = "lowerdir=%s" % self.ctx.lower
        if self.opts:
            opts += "," + self.opts
        self._spawn([self.binary, "-f", self.mnt, "-o", opts])
        return self.mnt


CLASSES = {c.name: c for c in (Tmpfs, KernelOverlay, FuseOverlayfs, UnionfsFuse, Memoverlay)}
# unionfs-fuse is run with allow_other, which a plain user may not ask for
# without user_allow_other in /etc/fuse.conf (not ours to change)
USER_CAPABLE = ("fuse-overlayfs", "memoverlay")


def as_user(fs, pw):
    """The same filesystem, mounted by the plain user pw (through the setuid
    fusermount3, as an unprivileged user would) and named NAME-user."""
    u = copy.copy(fs)
    u.name = fs.name + "-user"
    u.mnt = os.path.join(fs.ctx.mntdir, u.name)
    u.upper = os.path.join(fs.ctx.mntdir, u.name + "-upper")
    u.proc = None
    u.errlog = None
    u.user = pw
    return u


def kill_started(pids):
    """End the daemons this run started (by pid) that are still alive."""
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(0.3)
    for pid in list(pids):
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, ChildProcessError):
            pass
        pids.discard(pid)

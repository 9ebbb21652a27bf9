"""The podman workload: a container writing small files, run by root's
podman 4.3 with the filesystem under test as containers/storage's overlay
mount program (fuse-overlayfs, memoverlay and its variants) or, for the
kernel-overlay row, podman's own overlay driver (kernel overlayfs, no mount
program). The storage, configuration and image are the workload's own,
under WORKDIR/podman: the machine's containers storage is never touched.
Settings as in tests/integration/test_podman.py (runc: crun fails on
hybrid cgroups; rlimits root may set without CAP_SYS_RESOURCE)."""
import os
import shutil
import subprocess
import tempfile
import time

FILES = 2000                 # small files the container writes
BIG_MIB = 50                 # and one file of this size
IMAGE = "localhost/bench-busybox:1"
BUSYBOX = "/bin/busybox"     # busybox-static

# the container's work: FILES small files in a new directory, one
# BIG_MIB file, sync (so that every mount program has the data, not only
# the container's page cache)
SCRIPT = ("mkdir /w && cd /w && i=0 && while [ $i -lt %d ]; do echo file $i > f$i; i=$((i+1)); done"
          " && head -c %d /dev/zero > big && sync" % (FILES, BIG_MIB << 20))

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "{d}/net"
"""


# Root's podman 4.3 keeps containers/image's blob-info cache in
# /var/lib/containers/cache whatever --root says, and reads
# /etc/containers/policy.json: every podman of the workload runs in one
# mount namespace of its own, where the workload's directories are bound
# over both (as in tests/integration/test_podman.py).
MACHINE_CACHE = "/var/lib/containers"
MACHINE_POLICY = "/etc/containers/policy.json"
NS_HOLDER = """
set -e
mount --make-rprivate /
mount --bind "$1/machine-cache" %s
[ ! -e %s ] || mount --bind "$1/policy.json" %s
echo ready
exec sleep 100000
""" % (MACHINE_CACHE, MACHINE_POLICY, MACHINE_POLICY)


class Failed(Exception):
    pass


class RootNamespace:
    """The mount namespace of root's podman (NS_HOLDER), held by a sleeping
    process: D/machine-cache and D/policy.json bound over the machine's
    paths. enter is the prefix that runs a command in it."""

    def __init__(self, d):
        os.makedirs(os.path.join(d, "machine-cache"))
        self.made_cache = not os.path.exists(MACHINE_CACHE)
        if self.made_cache:  # an empty mount point on a machine podman never ran on
            os.makedirs(MACHINE_CACHE, mode=0o700)
        self.holder = subprocess.Popen(["unshare", "--mount", "--", "/bin/sh", "-c", NS_HOLDER,
                                        "sh", str(d)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        line = self.holder.stdout.readline()
        if line != "ready\n":
            self.holder.kill()
            err = self.holder.communicate()[1].strip()[-300:]
            self._drop_cache()
            raise Failed("cannot set up podman's mount namespace: %r %s" % (line, err))
        self.pid = self.holder.pid
        self.enter = ["nsenter", "-t", str(self.pid), "-m", "--"]

    def end(self):
        self.holder.kill()
        self.holder.communicate()
        self._drop_cache()

    def _drop_cache(self):
        if self.made_cache:
            try:
                os.rmdir(MACHINE_CACHE)
            except OSError:
                pass


def mount_program(fsname, fs):
    """The mount program for FSNAME: a path, "" for podman's own overlay
    driver (kernel overlayfs), or None where the row does not apply."""
    if fsname.endswith("-user"):
        return None           # rootless podman: not measured here
    if fsname == "kernel-overlay":
        return ""
    if fsname == "fuse-overlayfs":
        return shutil.which("fuse-overlayfs")
    if fsname.startswith("memoverlay"):
        return fs.binary
    return None


def _image_tar(workdir):
    tar = os.path.join(workdir, "podman-image", "busybox.tar")
    if os.path.exists(tar):
        return tar
    root = os.path.join(workdir, "podman-image", "rootfs")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "etc", "root", "tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    names = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    for n in names.split():
        if n != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", n))
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", tar + ".tmp", "."], check=True)
    os.rename(tar + ".tmp", tar)
    return tar


class Podman:
    def __init__(self, ctx, name, program, opts=""):
        self.d = os.path.join(ctx.workdir, "podman", name)
        self.timeout = ctx.timeout
        shutil.rmtree(self.d, ignore_errors=True)
        for sub in ("tmp", "net", "home"):
            os.makedirs(os.path.join(self.d, sub))
        with open(os.path.join(self.d, "containers.conf"), "w") as f:
            f.write(CONTAINERS_CONF.format(d=self.d))
        # podman takes a runroot of at most 50 characters
        self.run = tempfile.mkdtemp(prefix="mo-bench-pm.", dir="/tmp")
        with open(os.path.join(self.d, "storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "overlay"\nrunroot = "%s"\ngraphroot = "%s/root"\n'
                    % (self.run, self.d))
        with open(os.path.join(self.d, "registries.conf"), "w") as f:
            f.write("unqualified-search-registries = []\n")
        with open(os.path.join(self.d, "policy.json"), "w") as f:
            f.write('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.root_ns = RootNamespace(self.d)
        self.ns = self.root_ns.enter
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self.d + "/home",
                    "TMPDIR": self.d + "/tmp", "LANG": "C",
                    "CONTAINERS_CONF": self.d + "/containers.conf",
                    "CONTAINERS_STORAGE_CONF": self.d + "/storage.conf",
                    "CONTAINERS_REGISTRIES_CONF": self.d + "/registries.conf"}
        self.argv = ["podman", "--root", self.d + "/root", "--runroot", self.run,
                     "--tmpdir", self.d + "/tmp", "--cgroup-manager", "cgroupfs",
                     "--storage-driver", "overlay"]
        if program:
            self.argv += ["--storage-opt", "overlay.mount_program=" + program]
        if opts:
            self.argv += ["--storage-opt", "overlay.mountopt=" + opts]

    def __call__(self, *args):
        t0 = time.monotonic()
        try:
            p = subprocess.run(self.ns + self.argv + list(args), env=self.env, capture_output=True, text=True,
                               timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise Failed("podman %s: timeout after %ds" % (args[0], self.timeout))
        if p.returncode != 0:
            raise Failed("podman %s: exit %d: %s" % (args[0], p.returncode, p.stderr.strip()[-300:]))
        return time.monotonic() - t0, p.stdout

    def cleanup(self):
        for args in (["rm", "-a", "-f", "-t", "0"], ["rmi", "-a", "-f"]):
            subprocess.run(self.ns + self.argv + args, env=self.env, capture_output=True,
                           timeout=self.timeout, stdin=subprocess.DEVNULL)
        for d in (self.d, self.run):
            for mp in sorted(_mounts_under(d, self.root_ns.pid), key=len, reverse=True):
                subprocess.run(self.ns + ["umount", "-l", mp], capture_output=True, timeout=30)
        self.root_ns.end()
        for d in (self.d, self.run):
            shutil.rmtree(d, ignore_errors=True)


def _mounts_under(prefix, pid):
    out = []
    with open("/proc/%d/mountinfo" % pid) as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix + "/"):
                out.append(mp)
    return out


def run(ctx, fsname, fs):
    """{podman-run, podman-run-diff} in s: `podman run` of the container
    (mount, the writes, unmount), then that plus `podman diff` of it (a
    mount again: it waits for a mount program's write-back of the run,
    and reads the changes), for FSNAME's mount program."""
    program = mount_program(fsname, fs)
    if program is None:
        return {}
    if not shutil.which("podman") or not os.path.exists(BUSYBOX):
        raise Failed("podman or busybox-static not installed (tools/install-deps.sh)")
    tar = _image_tar(ctx.workdir)
    pm = Podman(ctx, fsname, program, getattr(fs, "opts", "") if program else "")
    try:
        pm("import", tar, IMAGE)
        t_run, _ = pm("run", "--name", "bench", "--network", "none", IMAGE, "sh", "-c", SCRIPT)
        t_diff, out = pm("diff", "bench")
        if out.count("\n") < FILES:
            raise Failed("podman diff shows %d changes, not the %d files written"
                         % (out.count("\n"), FILES))
        return {"podman-run": t_run, "podman-run-diff": t_run + t_diff}
    finally:
        pm.cleanup()

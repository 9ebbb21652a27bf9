"""The workloads of issue 7. Each runs in a freshly mounted filesystem `root`
and returns {metric: value}. Metric units: MiB/s and IOPS (higher is better),
s, ms, MiB and fds (lower is better)."""
import json
import os
import subprocess
import sys
import time

import podman

HERE = os.path.dirname(os.path.abspath(__file__))
FIO_DIR = os.path.join(os.path.dirname(HERE), "fio")
METAOPS = os.path.join(HERE, "metaops.py")

HIGHER = "higher"
LOWER = "lower"


class Failed(Exception):
    pass


def as_user(ctx):
    """The argv prefix that runs a command as the filesystem's user: a FUSE
    mount made by a plain user is that user's alone (no allow_other), so its
    workloads run as that user too (fs.runner(), fsmounts.py)."""
    return getattr(ctx, "runner", [])


def sh(ctx, cmd, cwd=None, env=None):
    """Run a shell command with the run's timeout; return its wall time in s."""
    if cwd:  # changed into by the shell: root may not enter a plain user's FUSE mount
        cmd = "cd '%s' && %s" % (cwd, cmd)
    t0 = time.monotonic()
    p = subprocess.Popen(as_user(ctx) + ["bash", "-c", "set -o pipefail; " + cmd], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = p.communicate(timeout=ctx.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        raise Failed("timeout after %ds: %s" % (ctx.timeout, cmd))
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise Failed("%s: exit %d: %s" % (cmd, p.returncode, err.decode(errors="replace").strip()[-300:]))
    return dt


def py(ctx, *args):
    p = subprocess.Popen(as_user(ctx) + [sys.executable, METAOPS] + [str(a) for a in args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=ctx.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        raise Failed("timeout after %ds: metaops %s" % (ctx.timeout, args[0]))
    if p.returncode != 0:
        raise Failed("metaops %s: %s" % (args[0], err.decode(errors="replace").strip()[-300:]))
    return json.loads(out)


def fio(ctx, job, readonly=False, **env):
    out = os.path.join(ctx.logdir, "fio-last.json")
    e = dict(os.environ, RUNTIME=str(ctx.prof["runtime"]))
    e.update({k: str(v) for k, v in env.items()})
    # the JSON on stdout, written here: fio may run as a user who cannot write logdir
    p = subprocess.Popen(as_user(ctx) + ["fio", "--output-format=json"]
                         + (["--readonly"] if readonly else []) + [os.path.join(FIO_DIR, job)], env=e, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        txt, err = p.communicate(timeout=ctx.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        raise Failed("fio %s: timeout after %ds" % (job, ctx.timeout))
    if p.returncode != 0:
        raise Failed("fio %s: exit %d: %s" % (job, p.returncode, err.decode(errors="replace").strip()[-300:]))
    txt = txt.decode(errors="replace")
    with open(out, "w") as f:
        f.write(txt)
    j = json.loads(txt[txt.index("{"):])["jobs"][0]
    if j.get("error"):
        raise Failed("fio %s: job error %s" % (job, j["error"]))
    return j


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def scratch(ctx, root):
    d = os.path.join(root, "bench-scratch")
    sh(ctx, "mkdir -p '%s'" % d)
    return d


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise Failed("no VmRSS for pid %d" % pid)


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


# ---------------------------------------------------------------- workloads

def w_seqread_cold(ctx, fs, root):
    drop_caches()
    j = fio(ctx, "seqread.fio", readonly=True, FILE=os.path.join(root, "big.bin"))
    return {"seqread-cold": j["read"]["bw"] / 1024.0}


def w_seqread_warm(ctx, fs, root):
    f = os.path.join(root, "big.bin")
    sh(ctx, "cat %s >/dev/null" % f)
    j = fio(ctx, "seqread-warm.fio", readonly=True, FILE=f)
    return {"seqread-warm": j["read"]["bw"] / 1024.0}


def w_randread(ctx, fs, root):
    f = os.path.join(root, "big.bin")
    sh(ctx, "cat %s >/dev/null" % f)
    j = fio(ctx, "randread.fio", readonly=True, FILE=f)
    return {"randread-4k": j["read"]["iops"]}


def w_seqwrite(ctx, fs, root):
    j = fio(ctx, "seqwrite.fio", FILE=os.path.join(scratch(ctx, root), "seq.dat"), SIZE=ctx.prof["big"])
    return {"seqwrite-1M": j["write"]["bw"] / 1024.0}


def w_randwrite_new(ctx, fs, root):
    j = fio(ctx, "randwrite.fio", FILE=os.path.join(scratch(ctx, root), "rw.dat"), SIZE=ctx.prof["newfile"])
    return {"randwrite-4k-new": j["write"]["iops"]}


def w_randwrite_lower(ctx, fs, root):
    # the lower file is warm in the host page cache for every fs alike
    sh(ctx, "cat %s >/dev/null" % os.path.join(ctx.lower, "big.bin"))
    f = os.path.join(root, "big.bin")
    first = py(ctx, "firstwrite", f)["firstwrite"]
    j = fio(ctx, "randwrite-lower.fio", FILE=f)
    return {"copyup-first-write": first * 1000.0, "randwrite-4k-lower": j["write"]["iops"]}


def w_randrw(ctx, fs, root):
    j = fio(ctx, "randrw.fio", FILE=os.path.join(scratch(ctx, root), "rrw.dat"), SIZE=ctx.prof["newfile"])
    return {"randrw-75/25-fsync32": j["read"]["iops"] + j["write"]["iops"]}


def w_concurrent(ctx, fs, root):
    j = fio(ctx, "concurrent.fio", DIR=scratch(ctx, root), SIZE=ctx.prof["newfile"] // 4)
    return {"concurrent-4jobs": j["read"]["iops"] + j["write"]["iops"]}


def w_files(ctx, fs, root):
    r = py(ctx, "files", os.path.join(scratch(ctx, root), "files"), ctx.prof["files"])
    return {"create": r["create"], "stat": r["stat"], "unlink": r["unlink"]}


def w_tree(ctx, fs, root):
    t = os.path.join(root, "tree")
    first = sh(ctx, "ls -lR %s >/dev/null" % t)
    warm = sh(ctx, "ls -lR %s >/dev/null" % t)
    fnd = sh(ctx, "find %s >/dev/null" % t)
    r = {"ls-lR-first": first, "ls-lR-warm": warm, "find-warm": fnd}
    if fs.pid is not None:
        r["rss-after-ls-lR"] = rss_mib(fs.pid)
    return r


def w_mkdir(ctx, fs, root):
    d = os.path.join(scratch(ctx, root), "dirs")
    n = ctx.prof["dirs"]
    a = 10 if n >= 100 else 1          # a0..a9/b0..b9/c0..cK: n leaf dirs
    b = max(1, n // (a * a))
    lst = os.path.join(ctx.logdir, "dirs.txt")
    with open(lst, "w") as f:
        for i in range(a):
            for j in range(a):
                for k in range(b):
                    f.write("%s/a%d/b%d/c%d\n" % (d, i, j, k))
    mk = sh(ctx, "xargs mkdir -p < %s" % lst)
    rm = sh(ctx, "find %s -delete" % d)
    return {"mkdir-p": mk, "find-delete": rm}


def w_untar(ctx, fs, root):
    d = os.path.join(scratch(ctx, root), "untar")
    sh(ctx, "mkdir '%s'" % d)
    ut = sh(ctx, "tar -xf %s -C %s" % (ctx.tarball, d))
    cat = sh(ctx, "find %s -type f -print0 | xargs -0 cat >/dev/null" % d)
    return {"untar": ut, "untar-cat": cat}


def w_git(ctx, fs, root):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=ctx.workdir, GIT_OPTIONAL_LOCKS="1")
    r = os.path.join(root, "repo")
    first = sh(ctx, "git -c safe.directory='*' status --porcelain", cwd=r, env=env)
    warm = sh(ctx, "git -c safe.directory='*' status --porcelain", cwd=r, env=env)
    return {"git-status-first": first, "git-status-warm": warm}


def w_memory(ctx, fs, root):
    pid = fs.pid
    if pid is None:
        return {}
    base = rss_mib(pid)
    fd0 = nfds(pid)
    walked = py(ctx, "walk", os.path.join(root, "tree"))["entries"]
    after_walk = rss_mib(pid)
    n = ctx.prof["memfiles"]
    py(ctx, "create", os.path.join(scratch(ctx, root), "mem"), n)
    after_create = rss_mib(pid)
    fd1 = nfds(pid)
    scale_w = 100000.0 / max(1, walked)
    scale_c = 100000.0 / n
    return {"rss-after-walk": after_walk,
            "rss-per-100k-walked": max(0.0, after_walk - base) * scale_w,
            "rss-after-create": after_create,
            "rss-per-100k-created": max(0.0, after_create - after_walk) * scale_c,
            "fds-after-create": fd1,
            "fds-growth": fd1 - fd0}


def w_podman(ctx, fs, root):
    try:
        return podman.run(ctx, fs.name, fs)
    except podman.Failed as e:
        raise Failed(str(e))


# name, function, [(metric, unit, better)], description
WORKLOADS = [
    ("seqread-cold", w_seqread_cold, [("seqread-cold", "MiB/s", HIGHER)],
     "fio seq 1M read of the whole lower big file after drop_caches"),
    ("seqread-warm", w_seqread_warm, [("seqread-warm", "MiB/s", HIGHER)],
     "fio seq 1M read of the lower big file after reading it once through the mount"),
    ("randread", w_randread, [("randread-4k", "IOPS", HIGHER)],
     "fio 4k random read of the warm lower big file"),
    ("seqwrite", w_seqwrite, [("seqwrite-1M", "MiB/s", HIGHER)],
     "fio seq 1M write of a new file of the big file's size, end_fsync"),
    ("randwrite-new", w_randwrite_new, [("randwrite-4k-new", "IOPS", HIGHER)],
     "fio 4k random write into a new upper file (laid out first)"),
    ("randwrite-lower", w_randwrite_lower,
     [("copyup-first-write", "ms", LOWER), ("randwrite-4k-lower", "IOPS", HIGHER)],
     "first open(O_WRONLY)+4k pwrite of the lower big file (copy-up), then fio 4k random writes"),
    ("randrw", w_randrw, [("randrw-75/25-fsync32", "IOPS", HIGHER)],
     "fio 4k randrw 75/25, fsync=32, on a new upper file"),
    ("concurrent", w_concurrent, [("concurrent-4jobs", "IOPS", HIGHER)],
     "fio numjobs=4, 4k randrw 75/25, one new upper file each"),
    ("files", w_files, [("create", "s", LOWER), ("stat", "s", LOWER), ("unlink", "s", LOWER)],
     "create, stat, unlink N empty files in one new directory"),
    ("tree", w_tree, [("ls-lR-first", "s", LOWER), ("ls-lR-warm", "s", LOWER), ("find-warm", "s", LOWER),
                      ("rss-after-ls-lR", "MiB", LOWER)],
     "ls -lR (first after mount, then again) and find over the lower tree; FUSE daemons' VmRSS after"),
    ("mkdir", w_mkdir, [("mkdir-p", "s", LOWER), ("find-delete", "s", LOWER)],
     "xargs mkdir -p of N leaf dirs aI/bJ/cK (3 deep), then find -delete of them all"),
    ("untar", w_untar, [("untar", "s", LOWER), ("untar-cat", "s", LOWER)],
     "tar -xf of the /usr/include tarball, then find -type f | xargs cat"),
    ("git", w_git, [("git-status-first", "s", LOWER), ("git-status-warm", "s", LOWER)],
     "git status --porcelain in the repository in the lower layer, twice"),
    ("memory", w_memory,
     [("rss-after-walk", "MiB", LOWER), ("rss-per-100k-walked", "MiB", LOWER),
      ("rss-after-create", "MiB", LOWER), ("rss-per-100k-created", "MiB", LOWER),
      ("fds-after-create", "fds", LOWER), ("fds-growth", "fds", LOWER)],
     "memoverlay only: daemon VmRSS after lstat of every lower tree entry and after creating N empty upper files; open fds"),
    ("podman", w_podman, [("podman-run", "s", LOWER), ("podman-run-diff", "s", LOWER)],
     "podman run, small files: root's podman with the filesystem as overlay mount program "
     "(kernel-overlay: podman's own overlay driver) runs a container writing %d small files "
     "and %d MiB; then podman diff of it" % (podman.FILES, podman.BIG_MIB)),
]

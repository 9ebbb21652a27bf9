"""The one lower data set every filesystem sees, built once on disk and reused.

lower-<profile>/
  big.bin            random data, 1 GiB (quick: 256 MiB): seq/rand reads, copy-up
  tree/dNNNN/fNN     100,000 entries (quick: 10,000): ls -lR, find, RSS walk
  repo/              a git repository (a copy of /usr/include, committed)
data-<profile>/src.tar   tarball of /usr/include (quick: a part of it), not in the lower
"""
import hashlib
import json
import os
import shutil
import subprocess

FILES_PER_DIR = 100


def _stamp_ok(path, want):
    try:
        with open(path) as f:
            return json.load(f) == want
    except (OSError, ValueError):
        return False


def _include_dirs(prof):
    if prof["include"] == ["."]:
        return ["/usr/include"]
    return [os.path.join("/usr/include", d) for d in prof["include"]
            if os.path.isdir(os.path.join("/usr/include", d))]


def build(workdir, name, prof, log):
    lower = os.path.join(workdir, "lower-" + name)
    data = os.path.join(workdir, "data-" + name)
    stamp = os.path.join(workdir, "lower-%s.stamp" % name)
    want = {"version": 2, "big": prof["big"], "tree": prof["tree"], "include": prof["include"]}
    tar = os.path.join(data, "src.tar")
    if _stamp_ok(stamp, want) and os.path.isdir(lower) and os.path.exists(tar):
        log("lower data set: reusing %s" % lower)
        return lower, tar
    log("lower data set: building %s (once; reused by later runs)" % lower)
    for p in (lower, data, stamp):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)
    os.makedirs(lower)
    os.makedirs(data)
    # big file: random, incompressible
    with open("/dev/urandom", "rb") as src, open(os.path.join(lower, "big.bin"), "wb") as dst:
        left = prof["big"]
        while left:
            chunk = src.read(min(left, 8 << 20))
            dst.write(chunk)
            left -= len(chunk)
    # tree: dirs of FILES_PER_DIR small files; entries = dirs + files
    ndirs = max(1, prof["tree"] // (FILES_PER_DIR + 1))
    tree = os.path.join(lower, "tree")
    os.mkdir(tree)
    for d in range(ndirs):
        dp = os.path.join(tree, "d%04d" % d)
        os.mkdir(dp)
        for i in range(FILES_PER_DIR):
            with open(os.path.join(dp, "f%02d" % i), "wb") as f:
                f.write(b"x" * ((d * 7 + i * 13) % 1024))
    # git repository in the lower layer
    repo = os.path.join(lower, "repo")
    os.mkdir(repo)
    incs = _include_dirs(prof)
    for d in incs:
        subprocess.run(["cp", "-a", d, os.path.join(repo, os.path.basename(d) or "include")], check=True)
    genv = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=workdir,
                GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
                GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    for argv in (["git", "init", "-q", "."], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "lower snapshot"], ["git", "gc", "-q"]):
        subprocess.run(argv, cwd=repo, env=genv, check=True, stdout=subprocess.DEVNULL)
    # tarball of headers, outside the lower
    args = ["tar", "-cf", tar]
    for d in incs:
        args += ["-C", os.path.dirname(d), os.path.basename(d)]
    subprocess.run(args, check=True)
    with open(stamp, "w") as f:
        json.dump(want, f)
    return lower, tar


def checksum(root):
    """sha256 over every entry's path, type, mode, size, mtime, ctime and content."""
    h = hashlib.sha256()
    nfiles = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]) + ["."]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            h.update(("%s\0%o\0%d\0%d\0%d\n" % (rel, st.st_mode, st.st_size,
                                                 st.st_mtime_ns, st.st_ctime_ns)).encode())
            if os.path.isfile(p) and not os.path.islink(p):
                nfiles += 1
                with open(p, "rb") as f:
                    while True:
                        b = f.read(4 << 20)
                        if not b:
                            break
                        h.update(b)
    return h.hexdigest(), nfiles


def share_with(root, uid, gid, log):
    """Lets the plain user of the --as-user rows write where the workloads
    write: bench-scratch/ (made here), big.bin (copy-up) and repo/ (git's
    index) become theirs; the rest stays root's. The top directory stays
    root's, mode 0705: the kernel never caches the POSIX ACL of a FUSE mount's
    root inode (it is made before INIT turns ACLs on: ACL_DONT_CACHE), so
    every path walk through it by a non-owner would cost a GETXATTR round
    trip, unless it has no group bits. Idempotent; changes owners and modes,
    never contents (the checksum is taken after)."""
    def own(path, u, g, recursive=False):
        st = os.lstat(path)
        if (st.st_uid, st.st_gid) != (u, g) or recursive:
            subprocess.run(["chown"] + (["-R"] if recursive else []) + ["-h", "%d:%d" % (u, g), path],
                           check=True)
    scratch = os.path.join(root, "bench-scratch")
    if not os.path.isdir(scratch):
        log("lower data set: adding bench-scratch/ for the plain-user rows")
        os.mkdir(scratch)
    if os.lstat(os.path.join(root, "tree")).st_uid != 0:
        own(os.path.join(root, "tree"), 0, 0, recursive=True)
    own(root, 0, 0)
    if os.lstat(root).st_mode & 0o777 != 0o705:
        os.chmod(root, 0o705)
    for p in (scratch, os.path.join(root, "big.bin")):
        own(p, uid, gid)
    if os.lstat(os.path.join(root, "repo")).st_uid != uid:
        own(os.path.join(root, "repo"), uid, gid, recursive=True)

"""Write side (issue 6): real workloads on the mount — tar x + diff -r, git,
make, python3 -m compileall, cp -a preserving modes/owners/xattrs/times."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

import helpers as H
from helpers import write, mkdir, symlink

# The write side needs the daemon: the 'kernel' reference build is read-only.
pytestmark = pytest.mark.memoverlay_only

ENV = {**os.environ, "LC_ALL": "C", "TZ": "UTC", "HOME": "/nonexistent",
       "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}


def run(cmd, cwd=None, timeout=120, check=True, **kw):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{cmd} -> {r.returncode}\nstdout: {r.stdout[-3000:]}\n" \
                                  f"stderr: {r.stderr[-3000:]}"
    return r


SRC_TREES = ["/usr/include/linux", "/usr/include/x86_64-linux-gnu"]


@pytest.fixture
def source_tar(tmp_path):
    trees = [t for t in SRC_TREES if os.path.isdir(t)]
    if not trees:
        pytest.skip("no /usr/include tree to tar")
    tarball = tmp_path / "src.tar"
    run(["tar", "cf", str(tarball), "-C", "/usr/include"] +
        [os.path.relpath(t, "/usr/include") for t in trees])
    return tarball, trees


def test_tar_x_and_diff(mount, lowers, source_tar):
    tarball, trees = source_tar
    (l,) = lowers(1)
    # the lower already holds part of the tree, some files different: tar must replace them
    first = os.path.basename(trees[0])
    names = sorted(os.listdir(trees[0]))
    for n in names[:40]:
        p = os.path.join(trees[0], n)
        if os.path.isfile(p) and not os.path.islink(p):
            write(l / "inc" / first / n, "stale lower copy\n")
    write(l / "inc/unrelated", "keep")
    m = mount([l])
    run(["tar", "xf", str(tarball), "-C", str(m / "inc")])
    for t in trees:
        r = run(["diff", "-r", "--no-dereference", t, str(m / "inc" / os.path.basename(t))],
                check=False)
        assert r.returncode == 0, f"diff -r after tar x:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
    assert (m / "inc/unrelated").read_text() == "keep"
    # the modes survive too
    for t in trees:
        exp = H.view(t, mtimes=True, xattrs=False, nlink=False)
        got = H.view(m / "inc" / os.path.basename(t), mtimes=True, xattrs=False, nlink=False)
        for v in list(exp.values()) + list(got.values()):
            v.pop("uid"), v.pop("gid")
            if "mtime" in v:  # a tar archive keeps whole seconds
                v["mtime"] //= 10**9
        exp.pop("."), got.pop(".")
        assert exp == got, H.view_diff(exp, got)
    # a tar of the mount equals a tar of the original tree (names and sizes)
    a = run(["tar", "tvf", str(tarball)]).stdout
    b = run(["bash", "-c", f"tar cf - -C {m / 'inc'} "
             + " ".join(os.path.basename(t) for t in trees) + " | tar tvf -"]).stdout
    norm = lambda s: sorted(" ".join(x.split()[2:3] + x.split()[5:]) for x in s.splitlines())
    assert norm(a) == norm(b)
    # remove it all again
    for t in trees:
        shutil.rmtree(m / "inc" / os.path.basename(t))
    assert os.listdir(m / "inc") == ["unrelated"]


def test_git_init_add_commit(mount, lowers):
    (l,) = lowers(1)
    for i in range(30):
        write(l / "proj" / f"mod{i % 5}" / f"file{i}.txt", f"line {i}\n" * (i + 1))
    write(l / "proj/run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    symlink(l / "proj/link", "run.sh")
    m = mount([l])
    p = m / "proj"
    run(["git", "init", "-q", "-b", "main"], cwd=p)
    run(["git", "add", "-A"], cwd=p)
    run(["git", "commit", "-q", "-m", "initial"], cwd=p)
    assert run(["git", "status", "--porcelain"], cwd=p).stdout == ""
    files = run(["git", "ls-files", "-s"], cwd=p).stdout.splitlines()
    assert len(files) == 32
    assert any(x.startswith("100755") and x.endswith("run.sh") for x in files)
    assert any(x.startswith("120000") and x.endswith("link") for x in files)
    # modify a lower file, delete one, rename one, commit again
    with open(p / "mod0/file0.txt", "a") as f:
        f.write("changed\n")
    os.unlink(p / "mod1/file1.txt")
    run(["git", "mv", "mod2/file2.txt", "mod2/renamed.txt"], cwd=p)
    run(["git", "commit", "-q", "-am", "second"], cwd=p)
    assert run(["git", "status", "--porcelain"], cwd=p).stdout == ""
    assert len(run(["git", "log", "--oneline"], cwd=p).stdout.splitlines()) == 2
    run(["git", "gc", "-q"], cwd=p)
    run(["git", "fsck", "--full", "--strict"], cwd=p)
    run(["git", "checkout", "-q", "HEAD~1"], cwd=p)
    assert (p / "mod1/file1.txt").read_text() == "line 1\n" * 2
    assert "changed" not in (p / "mod0/file0.txt").read_text()
    run(["git", "checkout", "-q", "main"], cwd=p)
    # a clone inside the mount (hard links between object files)
    run(["git", "clone", "-q", str(p), str(m / "clone")])
    assert (m / "clone/mod0/file0.txt").read_text().endswith("changed\n")


def test_make_c_program(mount, lowers):
    if not shutil.which("cc") or not shutil.which("make"):
        pytest.skip("no cc/make")
    (l,) = lowers(1)
    write(l / "prog/main.c", textwrap.dedent("""\
        #include <stdio.h>
        #include "util.h"
        int main(void) { printf("sum=%d\\n", add(40, 2)); return 0; }
        """))
    write(l / "prog/util.c", "#include \"util.h\"\nint add(int a, int b) { return a + b; }\n")
    write(l / "prog/util.h", "int add(int a, int b);\n")
    write(l / "prog/Makefile", textwrap.dedent("""\
        CFLAGS ?= -O1 -Wall
        prog: main.o util.o
        \t$(CC) -o $@ $^
        %.o: %.c util.h
        \t$(CC) $(CFLAGS) -c -o $@ $<
        clean:
        \trm -f prog *.o
        """))
    m = mount([l])
    p = m / "prog"
    run(["make", "-j2"], cwd=p)
    assert run([str(p / "prog")]).stdout == "sum=42\n"
    assert os.stat(p / "prog").st_mode & 0o111
    out = run(["make"], cwd=p).stdout
    assert "up to date" in out or "Nothing to be done" in out, out
    # edit a lower source: make sees the new mtime and rebuilds
    with open(p / "util.c", "w") as f:
        f.write("#include \"util.h\"\nint add(int a, int b) { return a * b; }\n")
    os.utime(p / "util.c", ns=(os.stat(p / "prog").st_mtime_ns + 10**9,) * 2)
    out = run(["make"], cwd=p).stdout
    assert "util.o" in out, out
    assert run([str(p / "prog")]).stdout == "sum=80\n"
    run(["make", "clean"], cwd=p)
    assert sorted(os.listdir(p)) == ["Makefile", "main.c", "util.c", "util.h"]


def test_python_compileall(mount, lowers):
    (l,) = lowers(1)
    libdir = os.path.dirname(os.__file__)
    for pkg in ("json", "email"):
        shutil.copytree(os.path.join(libdir, pkg), l / "lib" / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    m = mount([l])
    run([sys.executable, "-m", "compileall", "-q", str(m / "lib")], timeout=180)
    pyc = [os.path.join(d, f) for d, _, fs in os.walk(m / "lib") for f in fs
           if f.endswith(".pyc")]
    py = [os.path.join(d, f) for d, _, fs in os.walk(m / "lib") for f in fs if f.endswith(".py")]
    assert len(pyc) >= len(py) > 10
    code = "import json, email.parser, sys; print(json.__file__); " \
           "print(json.dumps({'a': email.parser.Parser().parsestr('X: 1\\n\\nb')['X']}))"
    r = run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(m / 'lib')!r}); "
             + code])
    assert r.stdout.splitlines() == [str(m / "lib/json/__init__.py"), '{"a": "1"}']
    # second run: nothing to recompile, the pycs are valid
    r = run([sys.executable, "-m", "compileall", str(m / "lib")], timeout=180)
    assert "Compiling" not in r.stdout


def _rich_tree(root):
    write(root / "t/plain", "plain\n")
    write(root / "t/exec", "#!/bin/sh\n", mode=0o755)
    write(root / "t/suid", "s", mode=0o4755)
    write(root / "t/sub/deep", "deep", mode=0o600)
    os.chown(root / "t/sub/deep", 4000000, 4000001)
    mkdir(root / "t/sticky", 0o1777)
    mkdir(root / "t/sgid", 0o2775)
    symlink(root / "t/sym", "plain")
    symlink(root / "t/dangling", "/no/such")
    os.link(root / "t/plain", root / "t/hard")
    os.mkfifo(root / "t/fifo", 0o644)
    os.setxattr(root / "t/plain", "user.k", b"v1")
    os.setxattr(root / "t/sub", "user.dir", b"d")
    os.setxattr(root / "t/exec", "trusted.k", b"t")
    for dp, dns, fns in os.walk(root / "t"):
        for n in fns + dns:
            os.utime(os.path.join(dp, n), ns=(1_234_567_890_123_456_789,) * 2,
                     follow_symlinks=False)
    os.chmod(root / "t/suid", 0o4755)


def test_cp_a_preserves_everything(mount, lowers, tmp_path):
    (l,) = lowers(1)
    _rich_tree(l)
    outside = tmp_path / "outside"
    outside.mkdir()
    _rich_tree(outside)
    m = mount([l])
    # lower tree -> new upper tree, and an outside tree -> into the mount
    run(["cp", "-a", str(m / "t"), str(m / "copy")])
    run(["cp", "-a", "--preserve=all", str(outside / "t"), str(m / "copy2")])
    exp = H.view(l / "t")
    for dst in ("copy", "copy2"):
        got = H.view(m / dst)
        exp.pop(".", None), got.pop(".", None)
        assert exp == got, f"cp -a into {dst}:\n" + H.view_diff(exp, got)
        assert os.stat(m / dst / "plain").st_ino == os.stat(m / dst / "hard").st_ino
    # and back out of the mount
    run(["cp", "-a", "--preserve=all", str(m / "copy"), str(tmp_path / "back")])
    got = H.view(tmp_path / "back")
    got.pop(".", None)
    assert exp == got, "cp -a out of the mount:\n" + H.view_diff(exp, got)


def test_rsync_style_metadata(mount, lowers, tmp_path):
    """rsync -a where installed; else cp -a --preserve=all plus touch -r/chmod
    --reference, which exercise the same setattr calls."""
    (l,) = lowers(1)
    _rich_tree(l)
    m = mount([l])
    if shutil.which("rsync"):
        run(["rsync", "-aHAX", str(m / "t") + "/", str(m / "r") + "/"])
    else:
        run(["cp", "-a", "--preserve=all", str(m / "t"), str(m / "r")])
    exp, got = H.view(m / "t"), H.view(m / "r")
    exp.pop("."), got.pop(".")
    assert exp == got, H.view_diff(exp, got)
    # metadata-only update of an existing copy (what a second rsync run does)
    os.chmod(m / "t/plain", 0o640)
    os.utime(m / "t/plain", ns=(1, 999_999_999))
    run(["chmod", "--reference", str(m / "t/plain"), str(m / "r/plain")])
    run(["touch", "-h", "-r", str(m / "t/plain"), str(m / "r/plain")])
    run(["chown", "--reference", str(m / "t/sub/deep"), str(m / "r/plain")])
    st = os.stat(m / "r/plain")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 999_999_999
    assert (st.st_uid, st.st_gid) == (4000000, 4000001)

"""Rootless use, as the people who run it do:

- a plain user (the test user, /dev/fuse mode 0666 as distributions ship
  it) mounts through the setuid fusermount3, reads, writes, creates, unlinks,
  unmounts with `fusermount3 -u`; the daemon is gone and the lower untouched;
- the plain user's daemon killed with SIGTERM or SIGKILL leaves no mount
  behind (its mo-unmounter child runs `fusermount3 -u -z`);
- mount words fusermount3 itself rejects (strictatime, relatime, atime...)
  still work for a plain user;
- allow_other for a plain user only with user_allow_other in /etc/fuse.conf;
- root of a user namespace (`unshare -Urm` as root and as the plain user,
  and a namespace with 65536 subordinate ids): mount(2) directly, write,
  chown to ids mapped there, umount.

Everything lives in world-reachable scratch directories under /tmp (the
pytest tmp_path of root is 0700), cleaned up -- mounts and processes -- at
the end of each test whatever happens."""

import errno
import os
import signal
import subprocess
import time

import pytest

import helpers as H

pytestmark = pytest.mark.memoverlay_only

START = H.DEADLINE


def test_plain_user_mount_keeps_fuse_dirty_limits(setup):
    """Only a root daemon lifts them (fs/bdi.c); a plain user's mount keeps
    the kernel's FUSE defaults."""
    s = setup
    s.mount()
    pids = s.pids()
    assert H.bdi_knobs(s.mnt) == {"max_ratio": 1, "strict_limit": 1}
    s.sh(f"fusermount3 -u {s.mnt}")
    alive = H.wait_pids_gone(pids, H.DEADLINE)
    assert not alive, f"processes left after fusermount3 -u: {alive}"
    s.check_san()


def test_plain_user_mount_write_unmount(setup):
    s = setup
    s.mount()
    pids = s.pids()
    main = H.main_daemon_pids(pids)
    assert len(main) == 1, f"daemon processes: {pids}"
    assert os.stat(f"/proc/{main[0]}").st_uid == s.user.uid, "the daemon must run as the user"
    m = s.mnt
    out = s.sh(f"""
        cat {m}/hello
        echo appended >> {m}/dir/data        # copy-up of a lower file
        cat {m}/dir/data
        echo new > {m}/new; cat {m}/new
        mkdir {m}/dir/sub/newdir; echo x > {m}/dir/sub/newdir/f
        rm {m}/dir/doomed
        test ! -e {m}/dir/doomed
        ln -s hello {m}/link; cat {m}/link
        mv {m}/new {m}/dir/renamed
        ls {m}/dir | tr '\\n' ' '
    """).stdout
    assert out.splitlines() == ["world", "lower data", "appended", "new", "world",
                                "data renamed sub "], out
    # not allow_other by default for a plain user: even root is kept out
    assert H.errno_of(os.stat, m / "hello") == errno.EACCES
    r = subprocess.run(s.user.prefix + ["fusermount3", "-u", str(m)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not H.is_mounted(m)
    alive = H.wait_pids_gone(pids, H.DEADLINE)
    assert not alive, f"processes left after fusermount3 -u: {alive} " \
                      f"{[H.proc_comm(p) for p in alive]}"
    s.check_lower()
    s.check_san()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_plain_user_daemon_killed_leaves_no_mount(setup, sig):
    s = setup
    s.mount()
    s.sh(f"echo w > {s.mnt}/w; cat {s.mnt}/hello >/dev/null")
    pids = s.pids()
    main = H.main_daemon_pids(pids)
    assert main, pids
    os.kill(main[0], sig)
    gone = H.wait_for(lambda: not H.is_mounted(s.mnt), H.DEADLINE)
    if not gone:
        e = H.stat_errno_bounded(s.mnt, user=s.user.prefix)
        pytest.fail(f"{signal.Signals(sig).name} of the plain user's daemon: {s.mnt} still "
                    f"mounted after {H.DEADLINE:.0f}s (access as the user: "
                    f"{e if e in ('hang',) or isinstance(e, str) else errno.errorcode.get(e, e)})")
    alive = H.wait_pids_gone(pids, H.DEADLINE)
    assert not alive, f"left running: {alive} {[H.proc_comm(p) for p in alive]}"
    s.check_lower()
    if sig != signal.SIGKILL:
        s.check_san()


@pytest.mark.parametrize("opts", ["strictatime", "relatime", "atime", "noatime",
                                  "rw,nosuid,nodev,relatime", "nodiratime,strictatime",
                                  "defaults,default_permissions"])
def test_plain_user_words_fusermount3_rejects(setup, opts):
    """fusermount3 refuses e.g. `strictatime` or `atime`; the daemon must keep
    such words to itself."""
    s = setup
    r = s.start(opts)
    assert r.returncode == 0, f"-o {opts} as a plain user: exit {r.returncode}: {r.stderr}"
    assert H.is_mounted(s.mnt)
    assert s.sh(f"cat {s.mnt}/hello; echo y > {s.mnt}/y; cat {s.mnt}/y").stdout == "world\ny\n"
    pids = s.pids()
    s.sh(f"fusermount3 -u {s.mnt}")
    assert not H.wait_pids_gone(pids, H.DEADLINE)
    s.check_lower()
    s.check_san()


FUSE_CONF = "/etc/fuse.conf"
NO_CONF = 97   # exit status: the namespace's own fuse.conf could not be set up


def own_fuse_conf(s, allow_other):
    """argv prefix: run a command in a private mount namespace whose
    /etc/fuse.conf is a file of the test's own, with or without
    user_allow_other. fusermount3 reads it there; the machine's file (which
    another test run may be relying on at the same time) is neither read
    nor changed. A daemon started this way lives in that namespace."""
    if not os.path.exists(FUSE_CONF):
        pytest.skip(f"no {FUSE_CONF} to stand in for")
    conf = s.d / "fuse.conf"
    conf.write_text("user_allow_other\n" if allow_other else "# (no user_allow_other)\n")
    os.chmod(conf, 0o644)
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            f'mount --bind "$0" {FUSE_CONF} || exit {NO_CONF}; exec "$@"', str(conf)]


def test_plain_user_allow_other_refused_without_user_allow_other(setup):
    s = setup
    r = subprocess.run(own_fuse_conf(s, False) + s.user.prefix + s.argv("allow_other"),
                       capture_output=True, text=True, timeout=START, env=H.daemon_env(s.san),
                       stdin=subprocess.DEVNULL)
    assert r.returncode != NO_CONF, r.stderr
    assert r.returncode != 0, "allow_other accepted for a plain user without user_allow_other"
    assert "user_allow_other" in r.stderr or "fuse.conf" in r.stderr, r.stderr
    assert not H.wait_pids_gone(s.pids(), H.DEADLINE)
    s.check_san()


def test_plain_user_allow_other_with_user_allow_other(setup):
    """With user_allow_other in fuse.conf, the plain user's allow_other
    mount serves another user (root here)."""
    s = setup
    r = subprocess.run(own_fuse_conf(s, True) + s.user.prefix + s.argv("allow_other"),
                       capture_output=True, text=True, timeout=START, env=H.daemon_env(s.san),
                       stdin=subprocess.DEVNULL)
    assert r.returncode != NO_CONF, r.stderr
    assert r.returncode == 0, f"plain-user allow_other mount failed ({r.returncode}): {r.stderr}"
    pids = s.pids()
    main = H.main_daemon_pids(pids)
    assert len(main) == 1, f"{pids} {[H.proc_comm(p) for p in pids]}"
    # the mount is in the daemon's namespace: look at it, and go through it
    # as root, from there
    mnt = os.path.realpath(s.mnt)
    info = [m for m in H.mountinfo(main[0]) if m["mountpoint"] == mnt]
    assert info and info[-1]["fstype"].startswith("fuse"), info
    assert f"user_id={s.user.uid}" in info[-1]["super_opts"], info
    assert "allow_other" in info[-1]["super_opts"], info
    with open(f"/proc/{main[0]}/root{mnt}/hello") as f:   # root, another user
        assert f.read() == "world\n"
    r = subprocess.run(["nsenter", "-t", str(main[0]), "-m", "--"] + s.user.prefix +
                       ["fusermount3", "-u", mnt], capture_output=True, text=True,
                       timeout=H.DEADLINE, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"fusermount3 -u as the user: {r.stderr}"
    assert not H.wait_pids_gone(pids, H.DEADLINE)
    s.check_lower()
    s.check_san()


# --------------------------------------------------------------------------
# Root of a user namespace: mount(2) directly


NS_SCRIPT = r"""
M={mnt}
{exe} -o lowerdir={lower}{opts} "$M"
grep " $M " /proc/self/mountinfo
cat "$M/hello"
echo appended >> "$M/dir/data"; cat "$M/dir/data"
echo new > "$M/new"
chown {cid}:{cgid} "$M/new" "$M/dir/data"
stat -c '%u:%g' "$M/new" "$M/dir/data"
rm "$M/dir/doomed"; ls "$M/dir" | tr '\n' ' '; echo
{extra}
umount "$M"
! grep -q " $M " /proc/self/mountinfo
"""


def _ns_checks(r, s, cid, cgid):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout {r.stdout}\nstderr {r.stderr}"
    lines = r.stdout.splitlines()
    assert "fuse" in lines[0] and "default_permissions" in lines[0], lines[0]
    assert "allow_other" in lines[0], f"root in a user namespace gets allow_other: {lines[0]}"
    assert lines[1:7] == ["world", "lower data", "appended", f"{cid}:{cgid}", f"{cid}:{cgid}",
                          "data sub "], r.stdout
    return lines


def _wait_daemon_gone(s):
    alive = H.wait_pids_gone(s.pids(), H.DEADLINE)
    assert not alive, f"daemon left after umount in the namespace: {alive}"


def test_root_in_unshare_Urm(memoverlay_build, scratch, user):
    """`unshare -Urm` as root: root maps to root only; mount(2) directly."""
    s = H.UserSetup(memoverlay_build, user, scratch)
    for p in [s.lower, *s.lower.rglob("*")]:
        os.lchown(p, 0, 0)
    s.before = H.tree_records(s.lower)
    script = NS_SCRIPT.format(mnt=s.mnt, exe=s.build.shell_cmd, lower=s.lower, opts="", cid=0,
                              cgid=0, extra="")
    r = subprocess.run(["unshare", "-Urm", "/bin/sh", "-ec", script], capture_output=True,
                       text=True, timeout=60, env=H.daemon_env(s.san), stdin=subprocess.DEVNULL)
    _ns_checks(r, s, 0, 0)
    _wait_daemon_gone(s)
    s.check_lower()
    s.check_san()


def test_plain_user_in_unshare_Urm(setup):
    """The plain user's `unshare -Urm`: uid 0 inside maps to the user; the
    daemon mounts with mount(2) itself, no fusermount3."""
    s = setup
    script = NS_SCRIPT.format(mnt=s.mnt, exe=s.build.shell_cmd, lower=s.lower, opts="", cid=0,
                              cgid=0, extra="")
    r = subprocess.run(s.user.prefix + ["unshare", "-Urm", "/bin/sh", "-ec", script],
                       capture_output=True, text=True, timeout=60, env=H.daemon_env(s.san),
                       stdin=subprocess.DEVNULL)
    _ns_checks(r, s, 0, 0)
    _wait_daemon_gone(s)
    assert not H.is_mounted(s.mnt), "the namespace's mount leaked into the host"
    s.check_lower()
    s.check_san()


def test_userns_with_subordinate_ids(memoverlay_build, scratch, user):
    """A rootless runtime's namespace: ids 0..65535 map to 100000.. outside.
    Lower files owned by 100000 are root's inside; chown to other mapped ids
    (1000:1000) works and shows; a process with another uid in the namespace
    uses the mount (allow_other is the default for uid 0)."""
    s = H.UserSetup(memoverlay_build, user, scratch)
    base = 100000
    for p in [s.lower, *s.lower.rglob("*")]:
        os.lchown(p, base, base)
    os.chown(s.mnt, base, base)
    s.before = H.tree_records(s.lower)
    extra = (f'stat -c "%u:%g" "$M/hello"\n'
             f'setpriv --reuid=1000 --regid=1000 --clear-groups cat "$M/hello"\n'
             f'setpriv --reuid=1000 --regid=1000 --clear-groups sh -c "echo u > $M/new"\n'
             f'cat "$M/new"')
    script = NS_SCRIPT.format(mnt=s.mnt, exe=s.build.shell_cmd, lower=s.lower, opts="", cid=1000,
                              cgid=1000, extra=extra)
    r = H.run_in_userns(script, ns_root=(base, base), timeout=60, env=H.daemon_env(s.san))
    lines = _ns_checks(r, s, 1000, 1000)
    assert lines[7:] == ["0:0", "world", "u"], r.stdout
    _wait_daemon_gone(s)
    s.check_lower()
    s.check_san()


# --------------------------------------------------------------------------
# /dev/fuse mode 0600 (no udev rule: containers, some VMs)


def test_plain_user_with_dev_fuse_0600(setup):
    """Where /dev/fuse is 0600 root:root no plain user can mount: fusermount3
    opens the device as the calling user too, by design (the mode is the
    administrator's word on who may use FUSE). memoverlay says so in one
    line that names the device, its mode and the fix, exits non-zero and
    mounts nothing. The 0600 node is a private copy bound over /dev/fuse in
    a mount namespace of the test's own: the machine's /dev/fuse is never
    changed."""
    s = setup
    dev = s.d / "fuse0600"
    user = " ".join(s.user.prefix)
    script = (f'mknod -m 0600 "{dev}" c 10 229 && mount --bind "{dev}" /dev/fuse || exit 99\n'
              f'{user} {" ".join(s.argv())} && exit 97\n'
              f'if grep -q " {s.mnt} " /proc/self/mountinfo; then echo mounted >&2; exit 96; fi\n')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                        script], capture_output=True, text=True, timeout=START * 2,
                       env=H.daemon_env(s.san), stdin=subprocess.DEVNULL)
    assert r.returncode != 99, f"cannot set up a private 0600 /dev/fuse: {r.stderr}"
    assert r.returncode != 97, "a plain user mounted with /dev/fuse 0600?"
    assert r.returncode == 0, f"rc {r.returncode}\nstdout {r.stdout}\nstderr {r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "/dev/fuse (mode 0600)" in lines[0] and "chmod 0666 /dev/fuse" in lines[0], lines
    assert not H.wait_pids_gone(s.pids(), H.DEADLINE)
    s.check_lower()
    s.check_san()

/* unmounter.c: the unmount, when the daemon itself may not make it.
 *
 * A plain user's mount is made by the setuid fusermount3, and no_new_privs
 * (set right after) stops the daemon from running it again to unmount. Root
 * of a user namespace (a rootless container) mounts by itself, but the
 * daemon gives up CAP_SYS_ADMIN right after. So before either, a small child
 * is forked that waits for the daemon to end, however it ends (its end of a
 * pipe reads EOF), and then unmounts once: `fusermount3 -u -z` as a plain
 * user, umount2(MNT_DETACH) with only CAP_SYS_ADMIN kept as namespace root. */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static void wait_for_eof(int fd)
{
	char c;
	while (read(fd, &c, 1) < 0 && errno == EINTR)
		;
}

/* Runs in the child. Closing every other fd also closes its end of READY:
 * only then does the daemon go on, so that what /proc shows once the
 * starter has exited (the helper's name, its capabilities) is final. */
static _Noreturn void unmounter_main(int fd, const char *mountpoint)
{
	/* survive the signals meant for the daemon, and do not answer to its
	 * name (pkill -x memoverlay) */
	prctl(PR_SET_NAME, "mo-unmounter", 0, 0, 0);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	bool self = geteuid() == 0;
	if (self) {
		static const cap_value_t keep[] = { CAP_SYS_ADMIN };
		if (keep_only_caps(keep, 1) < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
			_exit(126);
	}
	if (chdir("/") < 0)
		_exit(126);
	if (fd > 0)
		close_range(0, (unsigned)fd - 1, 0);
	close_range((unsigned)fd + 1, ~0U, 0);
	int null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
	}
	wait_for_eof(fd); /* the daemon has ended */
	if (self)
		_exit(umount2(mountpoint, MNT_DETACH) == 0 ? 0 : 1);
	execlp("fusermount3", "fusermount3", "-u", "-q", "-z", "--", mountpoint, (char *)NULL);
	_exit(127);
}

int unmounter_start(struct ovl *fs)
{
	int p[2], ready[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(ready, O_CLOEXEC) < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		return -e;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		close(ready[0]);
		close(ready[1]);
		return -e;
	}
	if (pid == 0)
		unmounter_main(p[0], fs->cfg.mountpoint);
	close(p[0]);
	close(ready[1]);
	wait_for_eof(ready[0]); /* the child is set up */
	close(ready[0]);
	fs->unmounter_pid = pid;
	fs->unmounter_fd = p[1]; /* kept until the daemon ends */
	return 0;
}

/* A clean end: the unmount is made before libfuse's own attempt, which then
 * finds the connection gone and stays quiet (it would fail without the
 * capability, and as a plain user fork fusermount3 in vain). */
void unmounter_finish(struct ovl *fs)
{
	if (fs->unmounter_pid <= 0)
		return;
	close(fs->unmounter_fd);
	while (waitpid(fs->unmounter_pid, NULL, 0) < 0 && errno == EINTR)
		;
	fs->unmounter_pid = 0;
}

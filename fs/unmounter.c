/* unmounter.c: a plain user's mount is made by the setuid fusermount3, and
 * no_new_privs (set right after) stops the daemon from running it again to
 * unmount. So before that, a small child is forked that waits for the daemon
 * to end, however it ends, and then runs `fusermount3 -u -z` once. */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int unmounter_start(const char *mountpoint)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		return -e;
	}
	if (pid > 0) {
		close(p[0]); /* the daemon keeps the write end until it exits */
		return 0;
	}
	/* child: nothing but the read end; survive the signals meant for the
	 * daemon, and do not answer to its name (pkill -x memoverlay) */
	prctl(PR_SET_NAME, "mo-unmounter", 0, 0, 0);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	for (int fd = 0; fd < 1024; fd++)
		if (fd != p[0])
			close(fd);
	int null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
	}
	char c;
	while (read(p[0], &c, 1) < 0 && errno == EINTR)
		;
	execlp("fusermount3", "fusermount3", "-u", "-q", "-z", "--", mountpoint, (char *)NULL);
	_exit(127);
}

/* transport.c: how requests reach the daemon.
 *
 * Two ways. libfuse's session loop reads (or splices) each request from
 * /dev/fuse and writes its reply back: two system calls per request. Or
 * FUSE over io_uring (Linux 6.14+, libfuse 3.18 built with liburing): at
 * INIT libfuse sets up one ring per CPU, each served by a thread of its own
 * ("fuse-ring-N", bound to its CPU), the kernel puts requests into the
 * rings and takes the replies from them, one io_uring_enter(2) for a reply
 * and the next request. The /dev/fuse loop stays, and ends the daemon at
 * unmount. -o io_uring=auto|on|off (config.h) chooses; the kernel offers
 * the ring only when the fuse module's enable_uring parameter is Y (N by
 * default).
 *
 * libfuse starts the ring while it answers the kernel's INIT, if it was
 * asked (its -o io_uring) and the kernel offered it; if the ring fails to
 * start it logs a line and goes on with /dev/fuse. So the daemon answers
 * INIT itself, before its starter exits, and looks at what it got: with
 * io_uring=on a ring that did not start is a failed mount, as a refused
 * option is, not a quiet fallback. (INIT is the first request of every
 * mount: the kernel queues it when it mounts and holds every other request
 * until the answer.)
 *
 * The rings' threads answer requests beside the session loop's, whatever
 * max_threads says: the ops are made for concurrent callers (the stress
 * test runs them so).
 */
#include "transport.h"
#include "libfuse_features.h"
#include "memoverlay.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_FUSE_IO_URING
#include <linux/io_uring.h>
#include <sys/syscall.h>

#define ENABLE_URING "/sys/module/fuse/parameters/enable_uring"

/* 1: the kernel offers FUSE over io_uring; 0: it could, but is not told
 * to; -1: this kernel has none. */
static int kernel_offers_ring(void)
{
	FILE *f = fopen(ENABLE_URING, "re");
	if (!f)
		return -1;
	int c = fgetc(f);
	fclose(f);
	return c == 'Y' || c == 'y' || c == '1';
}

/* Whether this process may make an io_uring at all: sysctl
 * kernel.io_uring_disabled, or a container's seccomp filter (Docker's
 * default one refuses io_uring_setup), may say no. 0 or -errno. Asked
 * here, before mounting, so that io_uring=auto does not ask libfuse for a
 * ring it cannot get (it would log its failure for every CPU), and
 * io_uring=on can say why. */
static int ring_allowed(void)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	long fd = syscall(__NR_io_uring_setup, 1, &p);
	if (fd < 0)
		return -errno;
	close((int)fd);
	return 0;
}
#endif

int transport_check(struct ovl *fs)
{
	enum io_uring_mode mode = fs->cfg.io_uring;
	/* libfuse reads FUSE_URING_ENABLE too, for its own tests: the option
	 * decides here, not the environment */
	unsetenv("FUSE_URING_ENABLE");
	fs->ring_asked = false;
	if (mode == IO_URING_OFF)
		return 0;
#ifdef HAVE_FUSE_IO_URING
	int offered = kernel_offers_ring();
	if (offered < 0) {
		if (mode == IO_URING_ON)
			fprintf(stderr, "memoverlay: io_uring=on: this kernel has no FUSE over "
				"io_uring (Linux 6.14 or later, CONFIG_FUSE_IO_URING); use "
				"io_uring=auto or off\n");
		return mode == IO_URING_ON ? -1 : 0;
	}
	if (!offered) {
		if (mode == IO_URING_ON)
			fprintf(stderr, "memoverlay: io_uring=on: the kernel does not offer FUSE "
				"over io_uring; as root: echo Y > " ENABLE_URING
				" (or use io_uring=auto or off)\n");
		return mode == IO_URING_ON ? -1 : 0;
	}
	int allowed = ring_allowed();
	if (allowed < 0) {
		if (mode == IO_URING_ON)
			fprintf(stderr, "memoverlay: io_uring=on: cannot make an io_uring: %s "
				"(sysctl kernel.io_uring_disabled, or a seccomp filter); use "
				"io_uring=auto or off\n", strerror(-allowed));
		return mode == IO_URING_ON ? -1 : 0;
	}
	fs->ring_asked = true;
	return 0;
#else
	if (mode == IO_URING_ON) {
		fprintf(stderr, "memoverlay: io_uring=on: this build's libfuse (%s) has no FUSE "
			"over io_uring; build on libfuse 3.18 with liburing (tools/build-libfuse.sh), "
			"or use io_uring=auto or off\n", fuse_pkgversion());
		return -1;
	}
	return 0;
#endif
}

int transport_add_args(const struct ovl *fs, struct fuse_args *args)
{
	if (!fs->ring_asked)
		return 0;
	return fuse_opt_add_arg(args, "-o") == 0 && fuse_opt_add_arg(args, "io_uring") == 0 ?
	       0 : -1;
}

/* The rings libfuse made: each is an io_uring file descriptor (the daemon
 * makes none of its own). What the kernel says, not what libfuse logs. */
static unsigned count_rings(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;
	struct dirent *e;
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char target[64];
		ssize_t len = readlinkat(dirfd(d), e->d_name, target, sizeof(target) - 1);
		if (len < 0)
			continue;
		target[len] = '\0';
		if (strcmp(target, "anon_inode:[io_uring]") == 0)
			n++;
	}
	closedir(d);
	return n;
}

/* The proof that the rings serve: a request of the daemon's own, statfs
 * of the mount (never answered from a cache), from a thread of its own.
 * Once INIT has said "io_uring", the kernel holds every request until
 * all rings are registered; libfuse 3.18 does not notice a ring whose
 * registration failed (it takes liburing's -errno for errno, and a failed
 * REGISTER only sets an error), and the mount would hang, every process
 * that touches it with it. So the starter waits for the answer, and a
 * mount that gives none in RING_PROBE_SECONDS is a failed mount. */
#define RING_PROBE_SECONDS 10

static struct ring_probe {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	int err;
	const char *mountpoint;
} probe = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, NULL };

static void *probe_main(void *arg)
{
	(void)arg;
	struct statfs st;
	int err = statfs(probe.mountpoint, &st) < 0 ? errno : 0;
	pthread_mutex_lock(&probe.lock);
	probe.err = err;
	probe.done = true;
	pthread_cond_signal(&probe.cond);
	pthread_mutex_unlock(&probe.lock);
	return NULL;
}

/* 0: a request went through; else an errno (ETIMEDOUT: no answer). A
 * probe that never returns is left behind: the daemon exits. */
static int rings_serve(const char *mountpoint)
{
	pthread_t t;
	pthread_attr_t attr;
	probe.mountpoint = mountpoint;
	if (pthread_attr_init(&attr) != 0)
		return ENOMEM;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int err = pthread_create(&t, &attr, probe_main, NULL);
	pthread_attr_destroy(&attr);
	if (err)
		return err;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += RING_PROBE_SECONDS;
	pthread_mutex_lock(&probe.lock);
	while (!probe.done && err == 0)
		err = pthread_cond_timedwait(&probe.cond, &probe.lock, &until);
	if (probe.done)
		err = probe.err;
	pthread_mutex_unlock(&probe.lock);
	return err;
}

int transport_answer_init(struct ovl *fs)
{
	struct fuse_session *se = fs->se;
	struct fuse_buf buf = { .mem = NULL };
	int res;
	do
		res = fuse_session_receive_buf(se, &buf);
	while (res == -EINTR);
	/* The rings' threads start here and take this thread's signal mask:
	 * with every signal blocked, SIGTERM and the like go to the session
	 * loop's thread, whose read of /dev/fuse they interrupt to end it.
	 * (A ring thread that took one would only end itself, and leave its
	 * ring's requests unanswered.) */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (res > 0)
		fuse_session_process_buf(se, &buf);
	free(buf.mem);
	if (res <= 0 || fuse_session_exited(se)) {
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		fprintf(stderr, "memoverlay: the kernel's INIT failed%s%s\n", res < 0 ? ": " : "",
			res < 0 ? strerror(-res) : "");
		return -1;
	}
	fs->ring_queues = fs->ring_asked ? count_rings() : 0;
	int err = fs->ring_queues ? rings_serve(fs->cfg.mountpoint) : 0;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		fprintf(stderr, "memoverlay: FUSE over io_uring started but does not serve "
			"(statfs of the mount: %s); use io_uring=off\n",
			err == ETIMEDOUT ? "no answer" : strerror(err));
		return -1;
	}
	if (fs->cfg.io_uring == IO_URING_ON && fs->ring_queues == 0) {
		fprintf(stderr, "memoverlay: io_uring=on: libfuse did not start FUSE over io_uring "
			"(see its message above); use io_uring=auto or off\n");
		return -1;
	}
	if (fs->cfg.debug) {
		if (fs->ring_queues)
			fprintf(stderr, "memoverlay: transport: io_uring, %u rings\n",
				fs->ring_queues);
		else
			fprintf(stderr, "memoverlay: transport: /dev/fuse\n");
	}
	return 0;
}

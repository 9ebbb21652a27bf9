/* main.c: start-up. Check every input, open the layers and make the root
 * (super.c), mount, and only then detach, so the caller's exit status says
 * whether the mount is live. */
#include "control.h"
#include "hints.h"
#include "libfuse_features.h"
#include "memoverlay.h"
#include "seccomp.h"
#include "transport.h"
#include "version.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

/* fusermount3 lets plain users ask for allow_other only with this line. */
static bool fuse_conf_allows_other(void)
{
	FILE *f = fopen("/etc/fuse.conf", "re");
	char line[256];
	bool ok = false;
	if (!f)
		return false;
	while (!ok && fgets(line, sizeof(line), f)) {
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		ok = strncmp(p, "user_allow_other", 16) == 0 &&
		     (p[16] == '\0' || p[16] == '\n' || p[16] == ' ' || p[16] == '\t');
	}
	fclose(f);
	return ok;
}

static int add_opt(struct fuse_args *args, const char *opt)
{
	return fuse_opt_add_arg(args, "-o") == 0 && fuse_opt_add_arg(args, opt) == 0 ? 0 : -1;
}

/* The kernel enforces these flags itself; default_permissions makes it
 * check modes (and ACLs) so the daemon never has to. */
static int build_fuse_args(const struct ovl *fs, const char *argv0, struct fuse_args *args)
{
	const struct config *cfg = &fs->cfg;
	char fsname[PATH_MAX + 16];
	int res = fuse_opt_add_arg(args, argv0);

	/* fuse_opt treats ',' and '\' specially in -o values */
	size_t k = 0;
	k += (size_t)snprintf(fsname, sizeof(fsname), "fsname=");
	for (const char *s = cfg->source; *s && k + 3 < sizeof(fsname); s++) {
		if (*s == ',' || *s == '\\')
			fsname[k++] = '\\';
		fsname[k++] = *s;
	}
	fsname[k] = '\0';
	res |= add_opt(args, fsname);
	res |= add_opt(args, "subtype=memoverlay");
	res |= add_opt(args, "default_permissions");
	if (cfg->allow_other && geteuid() != 0 && !fuse_conf_allows_other()) {
		fprintf(stderr, "memoverlay: option 'allow_other' needs 'user_allow_other' "
			"in /etc/fuse.conf when not run as root\n");
		return -2;
	}
	if (cfg->allow_other)
		res |= add_opt(args, "allow_other");
	/* The flags the kernel enforces, in the words of the mount flag table
	 * (libhints). strictatime cannot be passed through libfuse; FUSE inodes
	 * get no kernel atime updates anyway: the daemon applies cfg->atime
	 * itself. libfuse mounts nosuid,nodev unless told otherwise, so suid
	 * and dev are said too. */
	static const struct {
		unsigned flag;
		bool say_clear;
	} kernel_flags[] = {
		{ HINTS_OPT_RDONLY, false }, { HINTS_OPT_NOSUID, true }, { HINTS_OPT_NODEV, true },
		{ HINTS_OPT_NOEXEC, false }, { HINTS_OPT_NOATIME, false },
		{ HINTS_OPT_SYNC, false }, { HINTS_OPT_DIRSYNC, false },
	};
	for (size_t i = 0; i < sizeof(kernel_flags) / sizeof(kernel_flags[0]); i++) {
		bool set = cfg->flags & kernel_flags[i].flag;
		if (set || kernel_flags[i].say_clear)
			res |= add_opt(args, hints_option_word(kernel_flags[i].flag, !set));
	}
	if (cfg->debug)
		res |= fuse_opt_add_arg(args, "-d");
	res |= transport_add_args(fs, args);
	return res ? -1 : 0;
}

/* Detaches from the caller only once the daemon is what it will stay —
 * mount live, unmount helper forked, privileges dropped — so that the
 * caller's exit status, and what /proc shows after it, are the truth.
 * (libfuse's fuse_daemonize signals its parent before any of that.) */
static int become_daemon(struct ovl *fs)
{
	int ready[2] = { -1, -1 };
	if (!fs->cfg.foreground) {
		if (pipe2(ready, O_CLOEXEC) < 0)
			return report_path_error("mountpoint", fs->cfg.mountpoint, errno);
		pid_t pid = fork();
		if (pid < 0)
			return report_path_error("mountpoint", fs->cfg.mountpoint, errno);
		if (pid > 0) {
			char status = 1;
			ssize_t n;
			close(ready[1]);
			while ((n = read(ready[0], &status, 1)) < 0 && errno == EINTR)
				;
			_exit(n == 1 && status == 0 ? 0 : 1); /* the daemon owns the mount now */
		}
		close(ready[0]);
		setsid();
	}
	/* Only root of the initial user namespace keeps CAP_SYS_ADMIN (for
	 * trusted.* xattrs, see privileges.c) and so can unmount itself. */
	bool self_unmount = geteuid() == 0 && in_initial_user_ns();
	if (!self_unmount && unmounter_start(fs) < 0) {
		fprintf(stderr, "memoverlay: no unmount helper; unmount by hand after the daemon ends\n");
		self_unmount = geteuid() == 0; /* keep what it takes to do it ourselves */
	}
	int pe = drop_privileges(self_unmount, fs->cfg.upperdir != NULL);
	if (pe < 0) {
		fprintf(stderr, "memoverlay: cannot drop privileges: %s\n", strerror(-pe));
		return pe;
	}
	fs->backing_allowed = passthrough_allowed(); /* capget: before the filter */
	/* memoverlay-ctl's channel: made here, by the process that serves
	 * (after the fork above and the unmount helper's, so neither holds
	 * the socket), before the filter (socket, bind, mkdir); served once
	 * INIT is answered. Without it the mount still works. */
	control_open(fs);
	/* The filter first, then the kernel's INIT: libfuse starts its rings
	 * there, and the answer lets requests in (transport.c). The calls
	 * only starting the rings needs go with a second filter. */
	int sc = seccomp_install(&fs->cfg, fs->ring_asked ? SECCOMP_RING_STARTING : SECCOMP_NO_RING);
	if (sc < 0)
		return sc;
	if (transport_answer_init(fs) < 0)
		return -EPROTO;
	if (fs->ring_asked) {
		sc = seccomp_install(&fs->cfg, fs->ring_queues ? SECCOMP_RING_RUNNING :
							    SECCOMP_NO_RING);
		if (sc < 0)
			return sc;
	}
	control_run(fs);
	if (!fs->cfg.foreground) {
		/* keep no directory busy and no caller's pipe open */
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (chdir("/") < 0 || null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 ||
		    dup2(null, 2) < 0)
			return -errno;
		if (null > 2)
			close(null);
		char status = 0;
		if (write(ready[1], &status, 1) != 1)
			return -EIO;
		close(ready[1]);
	}
	return 0;
}

/* libfuse only says "failed to open /dev/fuse: Permission denied". The
 * setuid fusermount3 cannot help: it opens the device as the calling user,
 * by design (the device's mode is the administrator's word on who may use
 * FUSE). So say what to change, before trying. */
static int check_dev_fuse(void)
{
	if (access("/dev/fuse", R_OK | W_OK) == 0 || errno != EACCES)
		return 0;
	struct stat st;
	unsigned mode = stat("/dev/fuse", &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0;
	fprintf(stderr, "memoverlay: /dev/fuse (mode %04o) cannot be opened by uid %u: make it "
		"mode 0666 (chmod 0666 /dev/fuse, as Debian's udev rule does; in a container, "
		"give it /dev/fuse read-write)\n", mode, (unsigned)getuid());
	return -1;
}

/* One thread by default: every request is a round trip through the kernel,
 * and a single worker that goes straight back to /dev/fuse answers faster
 * than a pool whose threads take turns (on 2 CPUs: creates 60 vs 100 us,
 * 4 parallel fio jobs 96k vs 61k IOPS). A pool (-o max_threads=N) helps
 * when requests block on slow lower layers; its threads never exit, since
 * creating them again on the next burst costs more than keeping them. */
static int serve(struct fuse_session *se, unsigned max_threads)
{
	if (max_threads <= 1)
		return fuse_session_loop(se) == 0 ? 0 : 1;
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	if (!lc)
		return 1;
	fuse_loop_cfg_set_max_threads(lc, max_threads);
	fuse_loop_cfg_set_idle_threads(lc, max_threads);
	int ret = fuse_session_loop_mt(se, lc) == 0 ? 0 : 1;
	fuse_loop_cfg_destroy(lc);
	return ret;
}

/* Which libfuse this build has (its headers; the library a system build
 * runs may be a later 3.14.x) and what that libfuse can ask the kernel for
 * (meson.build's feature checks); the kernel still has to offer each. */
static void print_version(void)
{
	static const struct {
		const char *name;
		bool have;
	} features[] = {
#ifdef HAVE_FUSE_PASSTHROUGH
		{ "passthrough", true },
#else
		{ "passthrough", false },
#endif
#ifdef HAVE_FUSE_IO_URING
		{ "io_uring", true },
#else
		{ "io_uring", false },
#endif
#ifdef HAVE_FUSE_KILLPRIV_V2
		{ "KILLPRIV_V2", true },
#else
		{ "KILLPRIV_V2", false },
#endif
	};
	printf("memoverlay %s\nlibfuse %s (%s", MEMOVERLAY_VERSION, LIBFUSE_BUILD_VERSION,
	       LIBFUSE_BUILD_KIND);
	if (strcmp(fuse_pkgversion(), LIBFUSE_BUILD_VERSION) != 0)
		printf("; running %s", fuse_pkgversion());
	printf(")\nlibfuse features:");
	for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++)
		printf("%s %s %s", i ? "," : "", features[i].name, features[i].have ? "yes" : "no");
	printf(" (if the kernel offers them)\n");
}

/* Root's own lazy unmount, while the connection still stands: once it is
 * gone (unmounted from outside, or aborted) the mount point may already
 * hold someone else's mount, which is not ours to take away (libfuse
 * checks the same). */
static void unmount_self(struct fuse_session *se, const char *mountpoint)
{
	struct pollfd pfd = { .fd = fuse_session_fd(se), .events = 0 };
	if (pfd.fd < 0 || (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR)))
		return;
	if (umount2(mountpoint, MNT_DETACH) < 0 && errno != EPERM && errno != EINVAL)
		fprintf(stderr, "memoverlay: unmount '%s': %s\n", mountpoint, strerror(errno));
}

int main(int argc, char **argv)
{
	struct ovl fs;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	int ret = 1;

	memset(&fs, 0, sizeof(fs));
	int pr = config_parse(&fs.cfg, argc, argv);
	if (pr == CONFIG_HELP)
		config_usage(argv[0]);
	else if (pr == CONFIG_VERSION)
		print_version();
	if (pr != 0) {
		config_free(&fs.cfg);
		return pr > 0 ? 0 : 1;
	}
	if (config_apply_hints(&fs.cfg) < 0) {
		config_free(&fs.cfg);
		return 1;
	}
	config_finish(&fs.cfg);
	if (transport_check(&fs) < 0 || passthrough_check_upper(&fs.cfg) < 0) {
		config_free(&fs.cfg);
		return 1;
	}
	pthread_rwlock_init(&fs.ns_lock, NULL);
	pthread_mutex_init(&fs.handles_lock, NULL);
	if (node_table_init(&fs) < 0) {
		fprintf(stderr, "memoverlay: out of memory\n");
		goto out_cfg;
	}
	if (open_layers(&fs) < 0 || writeback_init(&fs) < 0)
		goto out_layers;
	char err[256];
	if (filestore_create(&fs.store, fs.cfg.medium_dir, fs.cfg.size, err, sizeof(err)) < 0) {
		fprintf(stderr, "memoverlay: %s\n", err);
		goto out_layers;
	}
	/* its tmpfs is made now, with CAP_SYS_ADMIN; used if INIT allows */
	if (fs.cfg.passthrough_upper && !(fs.cfg.flags & HINTS_OPT_RDONLY) &&
	    upper_files_create(&fs.files, fs.cfg.size, err, sizeof(err)) < 0) {
		fprintf(stderr, "memoverlay: %s\n", err);
		goto out_layers;
	}
	if (make_root(&fs) < 0) {
		fprintf(stderr, "memoverlay: cannot set up the root: %s\n", strerror(errno));
		goto out_layers;
	}
	int ar = build_fuse_args(&fs, argv[0], &args);
	if (ar < 0) {
		if (ar == -1)
			fprintf(stderr, "memoverlay: out of memory\n");
		goto out_args;
	}

	se = fuse_session_new(&args, &ovl_ops, sizeof(ovl_ops), &fs);
	if (!se) {
		fprintf(stderr, "memoverlay: cannot start a FUSE session\n");
		goto out_args;
	}
	fs.se = se;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (check_dev_fuse() < 0)
		goto out_signals;
	if (fuse_session_mount(se, fs.cfg.mountpoint) != 0) {
		fprintf(stderr, "memoverlay: cannot mount on '%s'\n", fs.cfg.mountpoint);
		goto out_signals;
	}
	bdi_tune(&fs.cfg);
	int io = kernel_io_install(se);
	if (io < 0) {
		fprintf(stderr, "memoverlay: cannot set up /dev/fuse: %s\n", strerror(-io));
		goto out_unmount;
	}
	/* The mount is live: set up the daemon as it will run, then let the
	 * starting process exit 0. */
	if (become_daemon(&fs) < 0) {
		/* libfuse stops its rings (their threads use the session) only
		 * where its loop ends: an ended session's loop does just that */
		if (fs.ring_queues) {
			fuse_session_exit(se);
			fuse_session_loop(se);
		}
		goto out_unmount;
	}

	int ie = writeback_idle_start(&fs);
	if (ie < 0) /* the mount works; changes wait for unmount or fsync */
		fprintf(stderr, "memoverlay: upperdir: no write-back while idle: %s\n",
			strerror(-ie));
	ret = serve(se, fs.cfg.max_threads);
	writeback_idle_stop(&fs);
	control_stop(&fs); /* an export under way ends before the tree goes */
	/* unmounted, or SIGTERM/SIGINT: what is still only in memory goes
	 * to upperdir= (with volatile too: its one write-back) */
	if (writeback_all(&fs) < 0)
		ret = 1;
	handles_destroy_all(&fs);

out_unmount:
	control_stop(&fs);
	/* Our own unmount first (the helper's, or root's umount2 here): libfuse's
	 * attempt then finds the connection gone and stays quiet. Without the
	 * capability it would fail, and as a plain user fork fusermount3 in
	 * vain; as root, libfuse 3.17+ forks /bin/umount where libmount keeps
	 * /run/mount/utab, which the seccomp filter refuses, and the mount
	 * stayed behind. */
	if (fs.unmounter_pid > 0)
		unmounter_finish(&fs);
	else
		unmount_self(se, fs.cfg.mountpoint);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&args);
out_layers:
	node_table_destroy(&fs);
	if (fs.root)
		node_free(&fs, fs.root);
	if (fs.store)
		filestore_destroy(fs.store);
	upper_files_destroy(fs.files); /* after the nodes: their files are in it */
	writeback_free(&fs);
	close_layers(&fs);
out_cfg:
	pthread_rwlock_destroy(&fs.ns_lock);
	config_free(&fs.cfg);
	return ret;
}

/* main.c: start-up. Check every input, open the layers, mount, and only
 * then detach, so the caller's exit status says whether the mount is live. */
#include "memoverlay.h"
#include "seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int die_path(const char *what, const char *path, int err)
{
	fprintf(stderr, "memoverlay: %s '%s': %s\n", what, path, strerror(err));
	return -1;
}

/* Is `inner` the same as or below `outer`? Both are canonical paths. */
static bool path_within(const char *inner, const char *outer)
{
	size_t ol = strlen(outer);
	if (strcmp(outer, "/") == 0)
		return true;
	return strncmp(inner, outer, ol) == 0 && (inner[ol] == '\0' || inner[ol] == '/');
}

static int open_layers(struct ovl *fs)
{
	struct config *cfg = &fs->cfg;
	char mnt[PATH_MAX];

	if (!realpath(cfg->mountpoint, mnt))
		return die_path("mountpoint", cfg->mountpoint, errno);
	struct stat mst;
	if (stat(mnt, &mst) < 0)
		return die_path("mountpoint", cfg->mountpoint, errno);
	if (!S_ISDIR(mst.st_mode))
		return die_path("mountpoint", cfg->mountpoint, ENOTDIR);
	/* The daemon leaves the caller's directory; unmounting needs the full path. */
	char *abs_mnt = strdup(mnt);
	if (!abs_mnt)
		return die_path("mountpoint", cfg->mountpoint, ENOMEM);
	free(fs->cfg.mountpoint);
	fs->cfg.mountpoint = abs_mnt;
	if (cfg->nlower > UINT16_MAX) {
		fprintf(stderr, "memoverlay: too many lower layers (%d, at most %d)\n",
			cfg->nlower, UINT16_MAX);
		return -1;
	}

	fs->layers = calloc((size_t)cfg->nlower, sizeof(*fs->layers));
	if (!fs->layers)
		return die_path("lowerdir", cfg->lowerdirs[0], ENOMEM);
	for (int i = 0; i < cfg->nlower; i++)
		fs->layers[i].root_fd = -1;
	fs->nlayers = cfg->nlower;

	for (int i = 0; i < cfg->nlower; i++) {
		struct layer *l = &fs->layers[i];
		const char *given = cfg->lowerdirs[i];
		char real[PATH_MAX];
		struct stat st;

		if (!realpath(given, real))
			return die_path("lowerdir", given, errno);
		l->root_fd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (l->root_fd < 0)
			return die_path("lowerdir", given, errno);
		if (fstat(l->root_fd, &st) < 0)
			return die_path("lowerdir", given, errno);
		if (path_within(mnt, real)) {
			fprintf(stderr, "memoverlay: mountpoint '%s' is inside lowerdir '%s'\n",
				cfg->mountpoint, given);
			return -1;
		}
		l->dev = st.st_dev;
		l->path = strdup(real);
		if (!l->path)
			return die_path("lowerdir", given, ENOMEM);
	}
	/* The top layer must be reachable the way every lookup will reach it. */
	int probe = layer_open(&fs->layers[0], "", O_PATH | O_DIRECTORY);
	if (probe < 0)
		return die_path("lowerdir", cfg->lowerdirs[0], -probe);
	close(probe);
	return 0;
}

static void close_layers(struct ovl *fs)
{
	for (int i = 0; i < fs->nlayers; i++) {
		if (fs->layers[i].root_fd >= 0)
			close(fs->layers[i].root_fd);
		free(fs->layers[i].path);
	}
	free(fs->layers);
	fs->layers = NULL;
}

static unsigned read_overflow_id(const char *path)
{
	unsigned id = 65534;
	FILE *f = fopen(path, "re");
	if (f) {
		if (fscanf(f, "%u", &id) != 1)
			id = 65534;
		fclose(f);
	}
	return id;
}

/* The root merges every layer; it shows the top lower root's owner and mode. */
static int make_root(struct ovl *fs)
{
	uint16_t all[fs->nlayers];
	uint16_t n = 0;
	for (int i = 0; i < fs->nlayers; i++)
		all[n++] = (uint16_t)i;
	struct node *root = node_new(S_IFDIR, "", all, n);
	if (!root)
		return -ENOMEM;
	struct stat st;
	if (fstat(fs->layers[0].root_fd, &st) < 0) {
		node_free(fs, root);
		return -errno;
	}
	root->st_ino = ino_from_lower(fs, st.st_dev, st.st_ino);
	root->ino = FUSE_ROOT_ID;
	root->parent_ino = root->st_ino;
	root->pins = 1; /* never freed while mounted */
	fs->root = root;

	/* The upper root copies the top lower root's owner, mode and times, so
	 * the mount point looks like the directory it covers. */
	/* An owner not mapped into our user namespace (a rootless sandbox over
	 * a root-owned tree) shows as the overflow id, and the kernel lets
	 * nobody write to an inode with an unmapped owner: the mount point
	 * would be read-only for everyone. Such a root is the daemon's own. */
	if (fs->cfg.uidmap.n || fs->cfg.gidmap.n) {
		struct config unsquashed = fs->cfg;
		unsquashed.squash_uid = unsquashed.squash_gid = -1;
		idmap_show(&unsquashed, &st, true);
	}
	if (st.st_uid == read_overflow_id("/proc/sys/fs/overflowuid"))
		st.st_uid = geteuid();
	if (st.st_gid == read_overflow_id("/proc/sys/fs/overflowgid"))
		st.st_gid = getegid();
	st.st_ino = root->st_ino;
	root->upper = upper_new(&st);
	if (!root->upper)
		return -ENOMEM;
	root->upper->counted = true;
	return upper_inode_reserve(fs);
}

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
	bool allow_other = cfg->allow_other_set ? cfg->allow_other : geteuid() == 0;
	if (allow_other && geteuid() != 0 && !fuse_conf_allows_other()) {
		fprintf(stderr, "memoverlay: option 'allow_other' needs 'user_allow_other' "
			"in /etc/fuse.conf when not run as root\n");
		return -2;
	}
	if (allow_other)
		res |= add_opt(args, "allow_other");
	if (cfg->ro)
		res |= add_opt(args, "ro");
	/* libfuse mounts nosuid,nodev unless told otherwise; fstab's default is
	 * suid,dev. Only root may have them (fusermount3 forces nosuid,nodev). */
	if (cfg->nosuid || geteuid() != 0)
		res |= add_opt(args, "nosuid");
	else
		res |= add_opt(args, "suid");
	if (cfg->nodev || geteuid() != 0)
		res |= add_opt(args, "nodev");
	else
		res |= add_opt(args, "dev");
	if (cfg->noexec)
		res |= add_opt(args, "noexec");
	if (cfg->atime == ATIME_NOATIME)
		res |= add_opt(args, "noatime");
	/* strictatime cannot be passed through libfuse; FUSE inodes get no
	 * kernel atime updates anyway: the daemon applies cfg->atime itself. */
	if (cfg->sync)
		res |= add_opt(args, "sync");
	if (cfg->dirsync)
		res |= add_opt(args, "dirsync");
	if (cfg->debug)
		res |= fuse_opt_add_arg(args, "-d");
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
			return die_path("mountpoint", fs->cfg.mountpoint, errno);
		pid_t pid = fork();
		if (pid < 0)
			return die_path("mountpoint", fs->cfg.mountpoint, errno);
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
	int pe = drop_privileges(self_unmount);
	if (pe < 0) {
		fprintf(stderr, "memoverlay: cannot drop privileges: %s\n", strerror(-pe));
		return pe;
	}
	int sc = seccomp_install(&fs->cfg);
	if (sc < 0)
		return sc;
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

int main(int argc, char **argv)
{
	struct ovl fs;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	int ret = 1;

	memset(&fs, 0, sizeof(fs));
	int pr = config_parse(&fs.cfg, argc, argv);
	if (pr != 0) {
		config_free(&fs.cfg);
		return pr > 0 ? 0 : 1;
	}
	if (config_apply_hints(&fs.cfg) < 0) {
		config_free(&fs.cfg);
		return 1;
	}
	if (!fs.cfg.size_set)
		fs.cfg.size = upper_default_size();
	/* With the write cache, ENOSPC comes at writeback (fsync/close); a
	 * limit small next to the cache is better served exactly at write(2). */
	if (!write_cache_suits_limit(fs.cfg.size))
		fs.cfg.writeback = false;
	/* Exclusive access (the default, as with kernel overlayfs: lower layers do
	 * not change under a mount) lets the kernel cache entries and attributes
	 * for long; every change made through the mount updates those caches. */
	if (!fs.cfg.timeouts_set && !fs.cfg.shared_access)
		fs.cfg.entry_timeout = fs.cfg.attr_timeout = 86400.0;
	fs.entry_timeout = fs.cfg.entry_timeout;
	fs.attr_timeout = fs.cfg.attr_timeout;
	pthread_rwlock_init(&fs.ns_lock, NULL);
	pthread_mutex_init(&fs.handles_lock, NULL);
	if (node_table_init(&fs) < 0) {
		fprintf(stderr, "memoverlay: out of memory\n");
		goto out_cfg;
	}
	if (open_layers(&fs) < 0)
		goto out_layers;
	char err[256];
	if (filestore_create(&fs.store, fs.cfg.medium_dir, fs.cfg.size, err, sizeof(err)) < 0) {
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
	int io = kernel_io_install(se);
	if (io < 0) {
		fprintf(stderr, "memoverlay: cannot set up /dev/fuse: %s\n", strerror(-io));
		goto out_unmount;
	}
	/* The mount is live: set up the daemon as it will run, then let the
	 * starting process exit 0. */
	if (become_daemon(&fs) < 0)
		goto out_unmount;

	ret = serve(se, fs.cfg.max_threads);
	handles_destroy_all(&fs);

out_unmount:
	/* The helper's unmount first: libfuse's own attempt then finds the
	 * connection gone and stays quiet (without the capability it would
	 * fail, and as a plain user fork fusermount3 in vain). */
	unmounter_finish(&fs);
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
	close_layers(&fs);
out_cfg:
	pthread_rwlock_destroy(&fs.ns_lock);
	config_free(&fs.cfg);
	return ret;
}

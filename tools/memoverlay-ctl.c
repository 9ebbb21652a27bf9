/* SPDX-License-Identifier: Apache-2.0 */
/* memoverlay-ctl - look inside a live memoverlay mount, save its changes.
 *
 *   memoverlay-ctl stats MNT [--json]
 *   memoverlay-ctl export MNT FILE.tar|-           (an OCI image layer)
 *   memoverlay-ctl export MNT DIR --format=dir [--userxattr]
 *                                                   (a kernel overlayfs upper dir)
 *   memoverlay-ctl sync MNT                         (upperdir= mounts: write back now)
 *   --socket=PATH talks to that socket instead of finding the mount's.
 *
 * The daemon is found from the mount point alone: its device number in
 * /proc/self/mountinfo names the socket (fs/control.c), in the daemon's
 * socket directory — root's, this user's runtime dir, or the runtime dir
 * of the uid mountinfo gives as the mount's user_id. The mount itself is
 * never touched (no stat): that would be a FUSE request of its own, and
 * another user may not be let in at all.
 *
 * Exit status: 0 done, 1 failed (the reason on stderr), 2 usage. */
#include "control_proto.h"
#include "ctl_unpack.h"
#include "mountinfo.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXIT_FAIL 1
#define EXIT_USAGE 2

static const char usage_text[] =
	"usage: memoverlay-ctl stats MNT [--json]\n"
	"       memoverlay-ctl export MNT FILE.tar|-\n"
	"       memoverlay-ctl export MNT DIR --format=dir [--userxattr]\n"
	"       memoverlay-ctl sync MNT\n"
	"options: --socket=PATH  the daemon's control socket (default: found from MNT)\n";

/* bool in_initial_user_ns() of the daemon's privileges.c, for control_dir */
static bool initial_user_ns(void)
{
	FILE *f = fopen("/proc/self/uid_map", "re");
	unsigned long a = 0, b = 0, c = 0;
	bool init = f && fscanf(f, "%lu %lu %lu", &a, &b, &c) == 3 && a == 0 && b == 0 &&
		    c == 4294967295UL;
	if (f)
		fclose(f);
	return init;
}

/* MNT as mountinfo spells it: absolute, without symlinks — resolved
 * through its parent (never stat the mount itself: see the top). */
static int mount_path(const char *mnt, char *out, size_t cap)
{
	char buf[PATH_MAX];
	snprintf(buf, sizeof(buf), "%s", mnt);
	size_t n = strlen(buf);
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	char *slash = strrchr(buf, '/');
	const char *base = slash ? slash + 1 : buf;
	char parent[PATH_MAX];
	if (!slash)
		snprintf(parent, sizeof(parent), ".");
	else if (slash == buf)
		snprintf(parent, sizeof(parent), "/");
	else
		snprintf(parent, sizeof(parent), "%.*s", (int)(slash - buf), buf);
	if (strcmp(buf, "/") == 0) {
		snprintf(out, cap, "/");
		return 0;
	}
	if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		/* "." or "..": the mount point is not under it; resolve it whole */
		return realpath(buf, out) ? 0 : -errno;
	}
	char rp[PATH_MAX];
	if (!realpath(parent, rp))
		return -errno;
	if ((size_t)snprintf(out, cap, "%s/%s", strcmp(rp, "/") == 0 ? "" : rp, base) >= cap)
		return -ENAMETOOLONG;
	return 0;
}

static int try_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static int connect_mount(const char *mnt, const char *socket_opt)
{
	if (socket_opt) {
		int fd = try_connect(socket_opt);
		if (fd < 0)
			fprintf(stderr, "memoverlay-ctl: cannot connect to '%s': %s\n", socket_opt,
				strerror(-fd));
		return fd;
	}
	char mp[PATH_MAX];
	struct mount_entry me;
	int res = mount_path(mnt, mp, sizeof(mp));
	if (res < 0) {
		fprintf(stderr, "memoverlay-ctl: '%s': %s\n", mnt, strerror(-res));
		return res;
	}
	/* MNT itself a symlink: resolved whole, where this user may */
	char whole[PATH_MAX];
	if (mountinfo_find(mp, true, &me) < 0 &&
	    (!realpath(mnt, whole) || mountinfo_find(whole, true, &me) < 0)) {
		fprintf(stderr, "memoverlay-ctl: '%s' is not a FUSE mount point\n", mp);
		return -ENOENT;
	}
	if (strcmp(me.fstype, "fuse.memoverlay") != 0 && strcmp(me.fstype, "fuse") != 0)
		fprintf(stderr, "memoverlay-ctl: '%s' is a %s mount; trying anyway\n", mp,
			me.fstype);
	/* every directory a daemon that mounted it may have used */
	char dirs[5][PATH_MAX];
	size_t nd = 0;
	uid_t me_uid = geteuid();
	if (control_dir(0, true, dirs[nd], PATH_MAX) == 0)
		nd++;
	if (control_dir(me_uid, me_uid == 0 && initial_user_ns(), dirs[nd], PATH_MAX) == 0)
		nd++;
	if (me.user_id >= 0) {
		snprintf(dirs[nd++], PATH_MAX, "/run/user/%ld/memoverlay", me.user_id);
		snprintf(dirs[nd++], PATH_MAX, "/tmp/memoverlay-%ld", me.user_id);
	}
	int last = -ENOENT;
	for (size_t i = 0; i < nd; i++) {
		bool dup = false;
		for (size_t j = 0; j < i; j++)
			dup |= strcmp(dirs[i], dirs[j]) == 0;
		if (dup)
			continue;
		char path[PATH_MAX + 64];
		if ((size_t)snprintf(path, sizeof(path), "%s/%s.sock", dirs[i], me.dev) >=
		    sizeof(path))
			continue;
		int fd = try_connect(path);
		if (fd >= 0)
			return fd;
		if (fd != -ENOENT || last == -ENOENT)
			last = fd == -ENOENT ? last : fd;
	}
	fprintf(stderr, "memoverlay-ctl: no memoverlay control channel for '%s' (device %s): %s\n",
		mp, me.dev, last == -ENOENT ? "no socket found (not a memoverlay mount, or one "
		"without a channel)" : strerror(-last));
	return last;
}

static int send_request(int fd, enum ctl_verb verb)
{
	struct ctl_request req = { .verb = verb };
	char msg[4 + CTL_MAX_REQUEST];
	uint32_t len = (uint32_t)ctl_format_request(&req, msg + 4, CTL_MAX_REQUEST);
	memcpy(msg, &len, 4);
	if (send(fd, msg, 4 + len, MSG_NOSIGNAL) != (ssize_t)(4 + len))
		return -errno;
	return 0;
}

/* ---- reading the reply's frames */

struct frames {
	int fd;
	uint32_t left;          /* of the current frame */
	bool ended;
	int status;             /* once ended */
	uint64_t total;
};

static ssize_t frames_read(void *arg, void *buf, size_t len)
{
	struct frames *f = arg;
	while (!f->ended && f->left == 0) {
		uint32_t k;
		int res = ctl_read_full(f->fd, &k, sizeof(k), ECONNRESET);
		if (res < 0)
			return res;
		if (k == 0) {
			int32_t st;
			res = ctl_read_full(f->fd, &st, sizeof(st), ECONNRESET);
			if (res < 0)
				return res;
			f->ended = true;
			f->status = st;
		} else {
			f->left = k;
		}
	}
	if (f->ended)
		return 0;
	size_t want = len < f->left ? len : f->left;
	ssize_t k;
	do
		k = read(f->fd, buf, want);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return -errno;
	if (k == 0)
		return -ECONNRESET;
	f->left -= (uint32_t)k;
	f->total += (uint64_t)k;
	return k;
}

static const char *status_text(int st)
{
	switch (st) {
	case EACCES: return "refused: only the daemon's own user and root may use its channel";
	case EOPNOTSUPP: return "this mount has no upperdir=: there is nothing to write back";
	case EINVAL: return "the daemon did not understand the request (another version?)";
	default: return strerror(st);
	}
}

/* The whole reply into memory (stats): malloc'd, NUL-terminated. */
static char *read_reply(int fd, int *status)
{
	struct frames f = { .fd = fd };
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	while (buf) {
		if (len + 1 >= cap) {
			char *g = realloc(buf, cap *= 2);
			if (!g) {
				free(buf);
				return NULL;
			}
			buf = g;
		}
		ssize_t k = frames_read(&f, buf + len, cap - len - 1);
		if (k < 0) {
			*status = (int)-k;
			free(buf);
			return NULL;
		}
		if (k == 0)
			break;
		len += (size_t)k;
	}
	if (buf)
		buf[len] = '\0';
	*status = f.status;
	return buf;
}

/* ---- stats */

static void human_bytes(char *out, size_t cap, uint64_t v)
{
	const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double d = (double)v;
	int u = 0;
	while (d >= 1024 && u < 4) {
		d /= 1024;
		u++;
	}
	snprintf(out, cap, u ? "%.1f %s" : "%.0f %s", d, unit[u]);
}

static void human_ns(char *out, size_t cap, uint64_t ns)
{
	if (ns < 10000)
		snprintf(out, cap, "%llu ns", (unsigned long long)ns);
	else if (ns < 10000000)
		snprintf(out, cap, "%.1f us", (double)ns / 1e3);
	else
		snprintf(out, cap, "%.1f ms", (double)ns / 1e6);
}

static uint64_t jget(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(o, a);
	if (b)
		v = json_object_get(v, b);
	return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static void print_stats(json_t *o)
{
	char a[32], b[32];
	human_bytes(a, sizeof(a), jget(o, "upper", "bytes_used"));
	uint64_t lim = jget(o, "upper", "bytes_limit");
	human_bytes(b, sizeof(b), lim);
	printf("mount            %s\n", json_string_value(json_object_get(o, "mountpoint")));
	printf("upper bytes      %s of %s (size=)\n", a, lim ? b : "unlimited");
	uint64_t ilim = jget(o, "upper", "inodes_limit");
	printf("upper inodes     %llu of ", (unsigned long long)jget(o, "upper", "inodes_used"));
	if (ilim)
		printf("%llu (nr_inodes=)\n", (unsigned long long)ilim);
	else
		printf("unlimited (nr_inodes=)\n");
	printf("whiteouts        %llu\nopaque dirs      %llu\n",
	       (unsigned long long)jget(o, "upper", "whiteouts"),
	       (unsigned long long)jget(o, "upper", "opaque_dirs"));
	printf("copy-ups         %llu metadata only, %llu lazy data, %llu whole\n",
	       (unsigned long long)jget(o, "copy_ups", "metadata"),
	       (unsigned long long)jget(o, "copy_ups", "lazy_data"),
	       (unsigned long long)jget(o, "copy_ups", "whole_data"));
	human_bytes(a, sizeof(a), jget(o, "upper", "lazy_lower_bytes"));
	printf("lazy copies      %llu files still read %s from lower files\n",
	       (unsigned long long)jget(o, "upper", "lazy_files"), a);
	printf("open files       %llu\n", (unsigned long long)jget(o, "open_files", NULL));
	human_bytes(a, sizeof(a), jget(o, "rss_bytes", NULL));
	printf("daemon RSS       %s\n", a);
	json_t *fu = json_object_get(o, "fuse");
	printf("libfuse          %s; passthrough %s, io_uring %s, writeback cache %s\n",
	       json_string_value(json_object_get(fu, "libfuse_version")),
	       json_is_true(json_object_get(fu, "passthrough_upper")) ? "on (upper files too)"
	       : json_is_true(json_object_get(fu, "passthrough"))   ? "on"
								     : "off",
	       json_is_true(json_object_get(fu, "io_uring")) ? "on" : "off",
	       json_is_true(json_object_get(fu, "writeback_cache")) ? "on" : "off");
	printf("requests         %-16s %10s %10s %10s\n", "", "count", "p50", "p99");
	const char *key;
	json_t *v;
	json_object_foreach(json_object_get(o, "requests"), key, v) {
		human_ns(a, sizeof(a), jget(v, "p50_ns", NULL));
		human_ns(b, sizeof(b), jget(v, "p99_ns", NULL));
		printf("                 %-16s %10llu %10s %10s\n", key,
		       (unsigned long long)jget(v, "count", NULL), a, b);
	}
}

static int cmd_stats(const char *mnt, const char *sock, bool as_json)
{
	int fd = connect_mount(mnt, sock);
	if (fd < 0)
		return EXIT_FAIL;
	int status = 0;
	char *text = send_request(fd, CTL_STATS) == 0 ? read_reply(fd, &status) : NULL;
	close(fd);
	if (!text || status) {
		fprintf(stderr, "memoverlay-ctl: stats: %s\n", status_text(status ? status : EIO));
		free(text);
		return EXIT_FAIL;
	}
	int ret = 0;
	if (as_json) {
		printf("%s\n", text);
	} else {
		json_error_t err;
		json_t *o = json_loads(text, 0, &err);
		if (!o) {
			fprintf(stderr, "memoverlay-ctl: stats: bad reply: %s\n", err.text);
			ret = EXIT_FAIL;
		} else {
			print_stats(o);
			json_decref(o);
		}
	}
	free(text);
	return ret;
}

/* ---- export */

/* The upper's size for the progress line, from a stats request. */
static uint64_t upper_bytes(const char *mnt, const char *sock)
{
	int fd = connect_mount(mnt, sock);
	if (fd < 0)
		return 0;
	int status = 0;
	char *text = send_request(fd, CTL_STATS) == 0 ? read_reply(fd, &status) : NULL;
	close(fd);
	json_t *o = text && !status ? json_loads(text, 0, NULL) : NULL;
	uint64_t v = o ? jget(o, "upper", "bytes_used") : 0;
	json_decref(o);
	free(text);
	return v;
}

struct progress {
	bool on;
	uint64_t expect;
	struct timespec last, start;
};

static double since(const struct timespec *a)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - a->tv_sec) + (double)(now.tv_nsec - a->tv_nsec) / 1e9;
}

static void progress_show(struct progress *p, uint64_t done, bool final)
{
	if (!p->on || (!final && since(&p->last) < 0.25))
		return;
	clock_gettime(CLOCK_MONOTONIC, &p->last);
	char a[32], b[32], r[32];
	human_bytes(a, sizeof(a), done);
	human_bytes(b, sizeof(b), p->expect);
	double t = since(&p->start);
	human_bytes(r, sizeof(r), t > 0 ? (uint64_t)((double)done / t) : 0);
	fprintf(stderr, "\rexporting: %s (upper data %s), %s/s   %s", a, b, r, final ? "\n" : "");
}

struct tar_copy {
	struct frames f;
	struct progress *p;
};

static ssize_t counted_read(void *arg, void *buf, size_t len)
{
	struct tar_copy *t = arg;
	ssize_t k = frames_read(&t->f, buf, len);
	if (k > 0)
		progress_show(t->p, t->f.total, false);
	return k;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t k = write(fd, p, len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		p += k;
		len -= (size_t)k;
	}
	return 0;
}

/* With the kernel's write cache (the default for exclusive access), the
 * kernel holds recent writes and file times and hands them to the daemon
 * later: syncfs hands them over now, so the export has what writers see.
 * Only where this user may open the mount (not another user's mount
 * without allow_other); the export then has what the daemon has. */
static void flush_kernel_cache(const char *mnt)
{
	int fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		syncfs(fd);
		close(fd);
	}
}

static int cmd_export(const char *mnt, const char *sock, const char *out, bool to_dir,
		      bool user_xattr)
{
	struct progress p = { .on = isatty(STDERR_FILENO) };
	if (p.on)
		p.expect = upper_bytes(mnt, sock);
	p.on = p.on && p.expect >= (64u << 20); /* a line only for large uppers */
	clock_gettime(CLOCK_MONOTONIC, &p.start);
	p.last = p.start;

	int fd = connect_mount(mnt, sock);
	if (fd < 0)
		return EXIT_FAIL;
	flush_kernel_cache(mnt);
	int res = send_request(fd, CTL_EXPORT_TAR);
	struct tar_copy t = { .f = { .fd = fd }, .p = &p };
	int ofd = -1;
	if (res == 0 && to_dir) {
		res = unpack_to_dir(counted_read, &t, out, user_xattr);
		/* drain what an early stop left, to get the daemon's status */
		char sink[65536];
		while (!t.f.ended && counted_read(&t, sink, sizeof(sink)) > 0)
			;
	} else if (res == 0) {
		bool std = strcmp(out, "-") == 0;
		ofd = std ? STDOUT_FILENO : open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (ofd < 0) {
			fprintf(stderr, "memoverlay-ctl: cannot create '%s': %s\n", out,
				strerror(errno));
			close(fd);
			return EXIT_FAIL;
		}
		char *buf = malloc(1 << 20);
		res = buf ? 0 : -ENOMEM;
		while (res == 0) {
			ssize_t k = counted_read(&t, buf, 1 << 20);
			if (k <= 0) {
				res = (int)k;
				break;
			}
			res = write_all(ofd, buf, (size_t)k);
		}
		free(buf);
		if (!std && close(ofd) < 0 && res == 0)
			res = -errno;
	}
	close(fd);
	progress_show(&p, t.f.total, true);
	int status = res < 0 ? -res : t.f.status;
	if (status || !t.f.ended) {
		fprintf(stderr, "memoverlay-ctl: export: %s\n",
			status_text(status ? status : ECONNRESET));
		if (!to_dir && strcmp(out, "-") != 0)
			unlink(out); /* no half an archive left looking whole */
		return EXIT_FAIL;
	}
	return 0;
}

/* ---- sync */

static int cmd_sync(const char *mnt, const char *sock)
{
	int fd = connect_mount(mnt, sock);
	if (fd < 0)
		return EXIT_FAIL;
	int status = 0;
	char *text = send_request(fd, CTL_SYNC) == 0 ? read_reply(fd, &status) : NULL;
	close(fd);
	free(text);
	if (!text || status) {
		fprintf(stderr, "memoverlay-ctl: sync: %s\n", status_text(status ? status : EIO));
		return EXIT_FAIL;
	}
	return 0;
}

static int usage(void)
{
	fputs(usage_text, stderr);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	const char *pos[3] = { 0 }, *sock = NULL;
	int npos = 0;
	bool json = false, to_dir = false, user_xattr = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--json") == 0)
			json = true;
		else if (strcmp(a, "--format=dir") == 0)
			to_dir = true;
		else if (strcmp(a, "--format=tar") == 0)
			to_dir = false;
		else if (strcmp(a, "--userxattr") == 0)
			user_xattr = true;
		else if (strncmp(a, "--socket=", 9) == 0)
			sock = a + 9;
		else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			return 0;
		} else if (a[0] == '-' && a[1] != '\0')
			return usage();
		else if (npos < 3)
			pos[npos++] = a;
		else
			return usage();
	}
	if (npos < 2)
		return usage();
	if (strcmp(pos[0], "stats") == 0 && npos == 2 && !to_dir)
		return cmd_stats(pos[1], sock, json);
	if (strcmp(pos[0], "export") == 0 && npos == 3 && !json)
		return cmd_export(pos[1], sock, pos[2], to_dir, user_xattr);
	if (strcmp(pos[0], "sync") == 0 && npos == 2 && !json && !to_dir)
		return cmd_sync(pos[1], sock);
	return usage();
}

/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_unpack.c: see ctl_unpack.h. Reads what tar_writer.c writes (and
 * the usual pax tar): ustar headers, 'x' extended headers (path,
 * linkpath, size, uid, gid, mtime, SCHILY.xattr.*), 'g' ignored. Paths
 * are checked (no absolute path, no ".."), and the last component is
 * never followed, so an archive cannot write outside dir. Directory
 * times are set last, once nothing more is made inside them. */
#include "ctl_unpack.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BLOCK 512

struct xattr_rec {
	char *name;
	char *value;
	size_t size;
};

struct meta {
	char *path, *linkpath;
	bool has_size, has_uid, has_gid, has_mtime;
	uint64_t size;
	uint64_t uid, gid;
	struct timespec mtime;
	struct xattr_rec *x;
	size_t nx;
};

struct dirtime {
	char *path;
	struct timespec mtime;
};

struct unpack {
	unpack_source src;
	void *arg;
	const char *root;
	int user_xattr;
	bool can_chown;
	struct dirtime *dt;
	size_t ndt, cdt;
	int err;
};

static void meta_clear(struct meta *m)
{
	free(m->path);
	free(m->linkpath);
	for (size_t i = 0; i < m->nx; i++) {
		free(m->x[i].name);
		free(m->x[i].value);
	}
	free(m->x);
	memset(m, 0, sizeof(*m));
}

static int read_exact(struct unpack *u, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t k = u->src(u->arg, (char *)buf + got, len - got);
		if (k < 0)
			return (int)k;
		if (k == 0)
			return -EPIPE; /* cut short */
		got += (size_t)k;
	}
	return 0;
}

static int skip(struct unpack *u, uint64_t len)
{
	char buf[8192];
	while (len) {
		size_t k = len < sizeof(buf) ? (size_t)len : sizeof(buf);
		int res = read_exact(u, buf, k);
		if (res < 0)
			return res;
		len -= k;
	}
	return 0;
}

static uint64_t octal(const char *f, size_t w)
{
	uint64_t v = 0;
	size_t i = 0;
	while (i < w && (f[i] == ' ' || f[i] == '\0'))
		i++;
	for (; i < w && f[i] >= '0' && f[i] <= '7'; i++)
		v = v * 8 + (uint64_t)(f[i] - '0');
	return v;
}

static char *field_str(const char *f, size_t w)
{
	size_t n = strnlen(f, w);
	char *s = malloc(n + 1);
	if (s) {
		memcpy(s, f, n);
		s[n] = '\0';
	}
	return s;
}

static int parse_time(const char *v, size_t len, struct timespec *ts)
{
	char buf[64];
	if (len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, v, len);
	buf[len] = '\0';
	bool neg = buf[0] == '-';
	char *dot = strchr(buf, '.');
	long long sec = strtoll(buf, NULL, 10);
	long nsec = 0;
	if (dot) {
		char frac[10] = "000000000";
		size_t k = strlen(dot + 1);
		memcpy(frac, dot + 1, k > 9 ? 9 : k);
		nsec = strtol(frac, NULL, 10);
	}
	if (neg && nsec) { /* -1.5 is -2 + 0.5 */
		sec -= 1;
		nsec = 1000000000L - nsec;
	}
	ts->tv_sec = (time_t)sec;
	ts->tv_nsec = nsec;
	return 0;
}

static int parse_pax(struct meta *m, char *rec, size_t len)
{
	size_t at = 0;
	while (at < len) {
		char *end;
		unsigned long rl = strtoul(rec + at, &end, 10);
		if (end == rec + at || *end != ' ' || rl == 0 || rl > len - at ||
		    rec[at + rl - 1] != '\n')
			return -EINVAL;
		char *key = end + 1, *lim = rec + at + rl - 1;
		char *eq = memchr(key, '=', (size_t)(lim - key));
		if (!eq)
			return -EINVAL;
		*eq = '\0';
		char *val = eq + 1;
		size_t vlen = (size_t)(lim - val);
		if (strcmp(key, "path") == 0) {
			free(m->path);
			m->path = strndup(val, vlen);
		} else if (strcmp(key, "linkpath") == 0) {
			free(m->linkpath);
			m->linkpath = strndup(val, vlen);
		} else if (strcmp(key, "size") == 0) {
			m->size = strtoull(val, NULL, 10);
			m->has_size = true;
		} else if (strcmp(key, "uid") == 0) {
			m->uid = strtoull(val, NULL, 10);
			m->has_uid = true;
		} else if (strcmp(key, "gid") == 0) {
			m->gid = strtoull(val, NULL, 10);
			m->has_gid = true;
		} else if (strcmp(key, "mtime") == 0) {
			m->has_mtime = parse_time(val, vlen, &m->mtime) == 0;
		} else if (strncmp(key, "SCHILY.xattr.", 13) == 0) {
			struct xattr_rec *g = realloc(m->x, (m->nx + 1) * sizeof(*g));
			if (!g)
				return -ENOMEM;
			m->x = g;
			char *v = malloc(vlen ? vlen : 1);
			char *n = strdup(key + 13);
			if (!v || !n) {
				free(v);
				free(n);
				return -ENOMEM;
			}
			memcpy(v, val, vlen);
			m->x[m->nx++] = (struct xattr_rec){ n, v, vlen };
		}
		at += rl;
	}
	return 0;
}

/* No absolute path, no "..", no empty result; "./" and trailing "/" go. */
static int clean_path(const char *in, char *out, size_t cap)
{
	while (in[0] == '.' && in[1] == '/')
		in += 2;
	if (in[0] == '/' || strlen(in) >= cap)
		return -EINVAL;
	strcpy(out, in);
	size_t n = strlen(out);
	while (n && out[n - 1] == '/')
		out[--n] = '\0';
	if (!n || strcmp(out, ".") == 0)
		return 1; /* the root itself */
	for (char *p = out; p;) {
		char *slash = strchr(p, '/');
		size_t k = slash ? (size_t)(slash - p) : strlen(p);
		if ((k == 2 && p[0] == '.' && p[1] == '.') || k == 0)
			return -EINVAL;
		p = slash ? slash + 1 : NULL;
	}
	return 0;
}

static void complain(struct unpack *u, const char *what, const char *path, int err)
{
	fprintf(stderr, "memoverlay-ctl: %s '%s/%s': %s\n", what, u->root, path, strerror(err));
	if (!u->err)
		u->err = -err;
}

/* Parents a foreign archive did not list. */
static void make_parents(const char *full)
{
	char buf[PATH_MAX * 2];
	if ((size_t)snprintf(buf, sizeof(buf), "%s", full) >= sizeof(buf))
		return;
	for (char *p = strchr(buf + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		mkdir(buf, 0755);
		*p = '/';
	}
}

static void set_meta(struct unpack *u, const char *full, const char *rel, const struct meta *m,
		     mode_t mode, bool is_link)
{
	if (u->can_chown && lchown(full, (uid_t)m->uid, (gid_t)m->gid) < 0)
		complain(u, "chown", rel, errno);
	if (!is_link && chmod(full, mode & 07777) < 0)
		complain(u, "chmod", rel, errno);
	for (size_t i = 0; i < m->nx; i++)
		if (lsetxattr(full, m->x[i].name, m->x[i].value, m->x[i].size, 0) < 0 &&
		    errno != ENOTSUP && errno != EPERM)
			complain(u, "setxattr", rel, errno);
}

static void set_time(struct unpack *u, const char *full, const char *rel, const struct meta *m)
{
	struct timespec ts[2] = { m->mtime, m->mtime };
	if (utimensat(AT_FDCWD, full, ts, AT_SYMLINK_NOFOLLOW) < 0)
		complain(u, "set times of", rel, errno);
}

static int write_data(struct unpack *u, const char *full, const char *rel, uint64_t size)
{
	int fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		complain(u, "create", rel, errno);
		return skip(u, size);
	}
	char *buf = malloc(1 << 20);
	int res = buf ? 0 : -ENOMEM;
	uint64_t off = 0;
	while (res == 0 && off < size) {
		size_t k = size - off < (1u << 20) ? (size_t)(size - off) : (1u << 20);
		res = read_exact(u, buf, k);
		/* all zeros: a hole, as the upper had it (sparse files stay sparse) */
		bool zero = res == 0 && buf[0] == 0 && memcmp(buf, buf + 1, k - 1) == 0;
		if (res == 0 && !zero && pwrite(fd, buf, k, (off_t)off) != (ssize_t)k) {
			complain(u, "write", rel, errno);
			res = 0;
			break;
		}
		off += k;
	}
	if (res == 0 && off < size)
		res = skip(u, size - off);
	if (res == 0 && ftruncate(fd, (off_t)size) < 0)
		complain(u, "truncate", rel, errno);
	free(buf);
	close(fd);
	return res;
}

static int entry(struct unpack *u, const char *hdr, struct meta *m)
{
	char type = hdr[156] ? hdr[156] : '0';
	if (!m->path) {
		/* ustar: prefix "/" name */
		char name[257];
		if (hdr[345])
			snprintf(name, sizeof(name), "%.155s/%.100s", hdr + 345, hdr);
		else
			snprintf(name, sizeof(name), "%.100s", hdr);
		m->path = strdup(name);
	}
	if (!m->linkpath)
		m->linkpath = field_str(hdr + 157, 100);
	if (!m->has_size)
		m->size = octal(hdr + 124, 12);
	if (!m->has_uid)
		m->uid = octal(hdr + 108, 8);
	if (!m->has_gid)
		m->gid = octal(hdr + 116, 8);
	if (!m->has_mtime)
		m->mtime = (struct timespec){ (time_t)octal(hdr + 136, 12), 0 };
	mode_t mode = (mode_t)octal(hdr + 100, 8);
	uint64_t data = (type == '0' || type == '7') ? m->size : 0;
	if (!m->path || !m->linkpath)
		return -ENOMEM;

	char rel[PATH_MAX], full[PATH_MAX * 2];
	int c = clean_path(m->path, rel, sizeof(rel));
	if (c < 0) {
		fprintf(stderr, "memoverlay-ctl: unsafe path in the archive: '%s'\n", m->path);
		return -EINVAL;
	}
	if (c == 1) /* the root: its owner and mode are the mount's, not the layer's */
		return skip(u, data + (BLOCK - data % BLOCK) % BLOCK);
	snprintf(full, sizeof(full), "%s/%s", u->root, rel);
	make_parents(full);
	const char *base = strrchr(rel, '/');
	base = base ? base + 1 : rel;
	int res = 0;
	/* an entry where this layer whited out the lower one (a directory
	 * made anew): the whiteout goes, the entry (opaque) takes its place */
	struct stat old;
	if (strncmp(base, ".wh.", 4) != 0 && lstat(full, &old) == 0 && S_ISCHR(old.st_mode) &&
	    old.st_rdev == makedev(0, 0))
		unlink(full);
	if (strcmp(base, ".wh..wh..opq") == 0) {
		char *slash = strrchr(full, '/');
		*slash = '\0';
		const char *name = u->user_xattr ? "user.overlay.opaque" : "trusted.overlay.opaque";
		if (lsetxattr(full, name, "y", 1, 0) < 0)
			complain(u, "mark opaque", rel, errno);
	} else if (strncmp(base, ".wh.", 4) == 0) {
		char *slash = strrchr(full, '/');
		memmove(slash + 1, slash + 5, strlen(slash + 5) + 1);
		if (mknod(full, S_IFCHR, makedev(0, 0)) < 0)
			complain(u, "make the whiteout", rel, errno);
	} else {
		switch (type) {
		case '0':
		case '7':
			res = write_data(u, full, rel, m->size);
			data = 0;
			if (res == 0)
				set_meta(u, full, rel, m, mode, false);
			break;
		case '1': {
			char target[PATH_MAX], tfull[PATH_MAX * 2];
			if (clean_path(m->linkpath, target, sizeof(target)) != 0) {
				fprintf(stderr, "memoverlay-ctl: unsafe link in the archive: '%s'\n",
					m->linkpath);
				return -EINVAL;
			}
			snprintf(tfull, sizeof(tfull), "%s/%s", u->root, target);
			if (link(tfull, full) < 0)
				complain(u, "link", rel, errno);
			break;
		}
		case '2':
			if (symlink(m->linkpath, full) < 0)
				complain(u, "symlink", rel, errno);
			else
				set_meta(u, full, rel, m, mode, true);
			break;
		case '3':
		case '4':
		case '6': {
			mode_t t = type == '3' ? S_IFCHR : type == '4' ? S_IFBLK : S_IFIFO;
			dev_t dev = makedev((unsigned)octal(hdr + 329, 8), (unsigned)octal(hdr + 337, 8));
			if (mknod(full, t | (mode & 07777), dev) < 0)
				complain(u, "make", rel, errno);
			else
				set_meta(u, full, rel, m, mode, false);
			break;
		}
		case '5': {
			if (mkdir(full, 0700) < 0 && errno != EEXIST) {
				complain(u, "mkdir", rel, errno);
				break;
			}
			set_meta(u, full, rel, m, mode, false);
			if (u->ndt == u->cdt) {
				size_t cap = u->cdt ? 2 * u->cdt : 64;
				struct dirtime *g = realloc(u->dt, cap * sizeof(*g));
				if (!g)
					return -ENOMEM;
				u->dt = g;
				u->cdt = cap;
			}
			u->dt[u->ndt++] = (struct dirtime){ strdup(full), m->mtime };
			break;
		}
		default:
			fprintf(stderr, "memoverlay-ctl: '%s': tar type '%c' skipped\n", rel, type);
		}
		if (type != '1' && type != '5')
			set_time(u, full, rel, m);
	}
	if (res == 0 && data)
		res = skip(u, data);
	if (res == 0 && m->size && (type == '0' || type == '7'))
		res = skip(u, (BLOCK - m->size % BLOCK) % BLOCK);
	return res;
}

int unpack_to_dir(unpack_source src, void *arg, const char *dir, int user_xattr)
{
	struct unpack u = { .src = src, .arg = arg, .root = dir, .user_xattr = user_xattr,
			    .can_chown = geteuid() == 0 };
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "memoverlay-ctl: mkdir '%s': %s\n", dir, strerror(errno));
		return -errno;
	}
	DIR *d = opendir(dir);
	int entries = 0;
	for (struct dirent *de; d && (de = readdir(d));)
		entries += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
	if (d)
		closedir(d);
	if (!d || entries) {
		/* an upper directory is the layer's alone: never merged into one */
		fprintf(stderr, "memoverlay-ctl: '%s' %s\n", dir,
			d ? "is not empty" : "cannot be read");
		return d ? -ENOTEMPTY : -EIO;
	}
	struct meta m = { 0 };
	char hdr[BLOCK];
	int res = 0, zeros = 0;
	while (res == 0) {
		res = read_exact(&u, hdr, BLOCK);
		if (res < 0)
			break;
		bool zero = true;
		for (int i = 0; i < BLOCK && zero; i++)
			zero = hdr[i] == 0;
		if (zero) {
			if (++zeros == 2)
				break;
			continue;
		}
		zeros = 0;
		unsigned sum = 0;
		for (int i = 0; i < BLOCK; i++)
			sum += (i >= 148 && i < 156) ? ' ' : (unsigned char)hdr[i];
		if (sum != octal(hdr + 148, 8)) {
			fprintf(stderr, "memoverlay-ctl: not a tar stream (bad header checksum)\n");
			res = -EINVAL;
			break;
		}
		char type = hdr[156];
		if (type == 'x' || type == 'g') {
			uint64_t size = octal(hdr + 124, 12);
			if (size > (64u << 20)) {
				res = -EINVAL;
				break;
			}
			char *rec = malloc(size + 1);
			res = rec ? read_exact(&u, rec, size) : -ENOMEM;
			if (res == 0 && type == 'x')
				res = parse_pax(&m, rec, size);
			free(rec);
			if (res == 0)
				res = skip(&u, (BLOCK - size % BLOCK) % BLOCK);
			continue;
		}
		res = entry(&u, hdr, &m);
		meta_clear(&m);
	}
	meta_clear(&m);
	/* innermost last in the archive: set times from the end back */
	for (size_t i = u.ndt; i-- > 0;) {
		struct timespec ts[2] = { u.dt[i].mtime, u.dt[i].mtime };
		if (u.dt[i].path)
			utimensat(AT_FDCWD, u.dt[i].path, ts, AT_SYMLINK_NOFOLLOW);
		free(u.dt[i].path);
	}
	free(u.dt);
	return res < 0 ? res : u.err;
}

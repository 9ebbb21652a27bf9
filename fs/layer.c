/* layer.c: access to the read-only lower layers.
 *
 * Every path is resolved beneath the layer root with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): a symlink or ".." inside a
 * layer can never take the daemon outside it, whatever the layer contains or
 * however it changes while mounted. Single names are then looked at with
 * *at() calls that do not follow a final symlink.
 *
 * Here too: whiteout and opaque markers, and the helpers that reach a
 * node's lower objects (ovl_open_lower, lower_xattr_path for l*xattr(2),
 * xattr_is_private for the overlay's own xattr names).
 */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define WHITEOUT_PREFIX ".wh."
#define WHITEOUT_PREFIX_LEN 4
#define META_PREFIX ".wh..wh."        /* overlay metadata, such as OPAQUE_MARKER */
#define META_PREFIX_LEN 8
#define OPAQUE_MARKER ".wh..wh..opq"

#if defined(__SANITIZE_THREAD__)
#define THREAD_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define THREAD_SANITIZER 1
#endif
#endif

/* Without openat2 (before Linux 5.6): one component at a time, none of them
 * followed if it is a symlink. Names in a layer path come from directory
 * entries, so none is "." or "..". ThreadSanitizer builds take this path
 * too: it cannot see fds made by a raw syscall, and then reports races (and
 * crashes) on their reuse. */
static int open_walk(int dirfd, const char *rel, int flags)
{
	char *path = strdup(rel);
	if (!path)
		return -ENOMEM;
	int cur = dirfd, res = 0;
	char *name = path, *slash;
	while (res >= 0 && (slash = strchr(name, '/')) != NULL) {
		*slash = '\0';
		res = openat(cur, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (res < 0)
			res = -errno;
		if (cur != dirfd)
			close(cur);
		cur = res;
		name = slash + 1;
	}
	if (res >= 0) {
		res = openat(cur, name[0] ? name : ".", flags | O_NOFOLLOW | O_CLOEXEC);
		if (res < 0)
			res = -errno;
	}
	if (cur != dirfd && cur >= 0)
		close(cur);
	free(path);
	return res;
}

static int open_beneath(int dirfd, const char *rel, int flags)
{
#ifdef THREAD_SANITIZER
	static bool have_openat2 = false;
#else
	static bool have_openat2 = true;
#endif
	if (__atomic_load_n(&have_openat2, __ATOMIC_RELAXED)) {
		struct open_how how = {
			.flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
		};
		int fd = (int)syscall(SYS_openat2, dirfd, rel[0] ? rel : ".", &how, sizeof(how));
		if (fd >= 0 || errno != ENOSYS)
			return fd < 0 ? -errno : fd;
		__atomic_store_n(&have_openat2, false, __ATOMIC_RELAXED);
	}
	return open_walk(dirfd, rel, flags);
}

int layer_open(const struct layer *l, const char *rel, int flags)
{
	size_t len = strlen(rel);
	if (len < PATH_MAX)
		return open_beneath(l->root_fd, rel, flags);

	/* Deeper than one path walk may go (PATH_MAX): walk it in pieces, each
	 * resolved beneath the directory the previous piece reached. */
	char *path = strdup(rel);
	if (!path)
		return -ENOMEM;
	int dirfd = -1, res = 0;
	char *rest = path;
	while (res >= 0 && strlen(rest) >= PATH_MAX) {
		char *cut = rest + PATH_MAX / 2;
		while (cut > rest && *cut != '/')
			cut--;
		if (cut == rest) {
			res = -ENAMETOOLONG;
			break;
		}
		*cut = '\0';
		int next = open_beneath(dirfd >= 0 ? dirfd : l->root_fd, rest, O_PATH | O_DIRECTORY);
		if (dirfd >= 0)
			close(dirfd);
		dirfd = next;
		res = next;
		rest = cut + 1;
	}
	if (res >= 0)
		res = open_beneath(dirfd, rest, flags);
	if (dirfd >= 0)
		close(dirfd);
	free(path);
	return res;
}

bool layer_name_is_marker(const char *name)
{
	return strncmp(name, WHITEOUT_PREFIX, WHITEOUT_PREFIX_LEN) == 0;
}

const char *layer_whiteout_target(const char *name)
{
	if (!layer_name_is_marker(name) || strncmp(name, META_PREFIX, META_PREFIX_LEN) == 0)
		return NULL;
	return name + WHITEOUT_PREFIX_LEN;
}

/* A char device 0/0 is the kernel overlayfs whiteout. */
bool layer_stat_is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && major(st->st_rdev) == 0 && minor(st->st_rdev) == 0;
}

enum lower_kind layer_probe(int dirfd, const char *name, struct stat *st)
{
	if (fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW) == 0)
		return layer_stat_is_whiteout(st) ? LOWER_WHITEOUT : LOWER_FOUND;
	if (errno != ENOENT)
		return LOWER_ABSENT; /* unreadable entries are treated as absent */

	/* The aufs/OCI-layer format: ".wh.NAME" beside the deleted name. */
	char wh[NAME_MAX + 1];
	struct stat whst;
	if (snprintf(wh, sizeof(wh), WHITEOUT_PREFIX "%s", name) >= (int)sizeof(wh))
		return LOWER_ABSENT;
	if (fstatat(dirfd, wh, &whst, AT_SYMLINK_NOFOLLOW) == 0)
		return LOWER_WHITEOUT;
	return LOWER_ABSENT;
}

static bool xattr_says_yes(const char *procpath, const char *attr)
{
	char v[4];
	ssize_t n = getxattr(procpath, attr, v, sizeof(v));
	return n == 1 && v[0] == 'y';
}

bool layer_dir_is_opaque(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return false;

	struct stat st;
	bool opaque = fstatat(fd, OPAQUE_MARKER, &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (!opaque) {
		/* An O_PATH fd has no fgetxattr; its /proc link resolves to
		 * exactly this directory, never through a name in the layer. */
		char procpath[64];
		snprintf(procpath, sizeof(procpath), "/proc/self/fd/%d", fd);
		opaque = xattr_says_yes(procpath, "trusted.overlay.opaque") ||
			 xattr_says_yes(procpath, "user.overlay.opaque");
	}
	close(fd);
	return opaque;
}

char *path_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p = malloc(dl + nl + 2);
	if (!p)
		return NULL;
	if (dl == 0) {
		memcpy(p, name, nl + 1);
	} else {
		memcpy(p, dir, dl);
		p[dl] = '/';
		memcpy(p + dl + 1, name, nl + 1);
	}
	return p;
}

int ovl_open_lower(struct ovl *fs, const struct node *n, int layer_pos, int flags)
{
	if (!n->lpath || layer_pos >= n->nlower)
		return -ENOENT;
	return layer_open(&fs->layers[n->lower[layer_pos]], n->lpath, flags);
}

int ovl_read_lower_link(struct ovl *fs, const struct node *n, char *buf, size_t size)
{
	int fd = ovl_open_lower(fs, n, 0, O_PATH);
	if (fd < 0)
		return fd;
	ssize_t len = readlinkat(fd, "", buf, size - 1);
	int res = len < 0 ? -errno : 0;
	close(fd);
	if (len >= 0)
		buf[len] = '\0';
	return res;
}

/* Overlay bookkeeping xattrs of the lower layers are never shown. */
bool xattr_is_private(const char *name)
{
	return strncmp(name, "trusted.overlay.", 16) == 0 ||
	       strncmp(name, "user.overlay.", 13) == 0;
}

int xattrs_each(const char *path, bool values,
		int (*fn)(const char *name, char *value, size_t size, void *arg), void *arg)
{
	ssize_t len = llistxattr(path, NULL, 0);
	char *names = len > 0 ? malloc((size_t)len) : NULL;
	if (len > 0 && !names)
		return -ENOMEM;
	if (len > 0)
		len = llistxattr(path, names, (size_t)len);
	if (len < 0) {
		int e = errno;
		free(names);
		return e == ENOTSUP ? 0 : -e;
	}
	int res = 0;
	for (ssize_t i = 0; res == 0 && i < len; i += (ssize_t)strlen(names + i) + 1) {
		const char *name = names + i;
		if (xattr_is_private(name))
			continue;
		char *val = NULL;
		ssize_t vlen = 0;
		if (values) {
			vlen = lgetxattr(path, name, NULL, 0);
			if (vlen < 0)
				continue; /* vanished, or not ours to read */
			val = malloc((size_t)vlen + 1);
			if (!val) {
				res = -ENOMEM;
				break;
			}
			vlen = lgetxattr(path, name, val, (size_t)vlen);
			if (vlen < 0) {
				free(val);
				continue;
			}
		}
		res = fn(name, val, (size_t)vlen, arg);
	}
	free(names);
	return res;
}

/* A path that reaches the node's top lower object without following any
 * symlink in the layer: its parent directory, opened beneath the layer root,
 * through /proc/self/fd, plus its last name (used with l*xattr). The root
 * has no parent and is reached through the layer's own fd. *fd is the fd to
 * close afterwards, or -1. */
int lower_xattr_path(struct ovl *fs, const struct node *n, char *path, size_t size, int *fd)
{
	*fd = -1;
	if (!n->lpath || n->nlower == 0)
		return -ENODATA;
	const struct layer *l = &fs->layers[n->lower[0]];
	if (n->lpath[0] == '\0') {
		snprintf(path, size, "/proc/self/fd/%d", l->root_fd);
		return 0;
	}
	const char *slash = strrchr(n->lpath, '/');
	char *parent = strndup(n->lpath, slash ? (size_t)(slash - n->lpath) : 0);
	if (!parent)
		return -ENOMEM;
	int dfd = layer_open(l, parent, O_PATH | O_DIRECTORY);
	free(parent);
	if (dfd < 0)
		return dfd;
	if (snprintf(path, size, "/proc/self/fd/%d/%s", dfd, slash ? slash + 1 : n->lpath) >= (int)size) {
		close(dfd);
		return -ENAMETOOLONG;
	}
	*fd = dfd;
	return 0;
}

/* inode.c: attributes, symlink targets, xattrs, access and statfs. */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <sys/xattr.h>
#include <unistd.h>

void ovl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	(void)fi;
	struct node *n = node_get(fs, ino);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct stat st;
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = ovl_getattr_node(fs, n, &st);
	pthread_rwlock_unlock(&fs->ns_lock);
	node_put(fs, n);
	if (res < 0)
		fuse_reply_err(req, -res);
	else
		fuse_reply_attr(req, &st, fs->attr_timeout);
}

void ovl_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct ovl *fs = ovl_of(req);
	struct node *n = node_get(fs, ino);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	char buf[PATH_MAX + 1];
	int fd = ovl_open_lower(fs, n, 0, O_PATH);
	node_put(fs, n);
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	ssize_t len = readlinkat(fd, "", buf, sizeof(buf) - 1);
	int err = errno;
	close(fd);
	if (len < 0) {
		fuse_reply_err(req, err);
		return;
	}
	buf[len] = '\0';
	fuse_reply_readlink(req, buf);
}

/* Overlay bookkeeping xattrs of the lower layers are never shown. */
static bool xattr_is_private(const char *name)
{
	return strncmp(name, "trusted.overlay.", 16) == 0 ||
	       strncmp(name, "user.overlay.", 13) == 0;
}

/* A path that reaches the node's top lower object without following any
 * symlink in the layer: its parent directory, opened beneath the layer root,
 * through /proc/self/fd, plus its last name (used with l*xattr). The root
 * has no parent and is reached through the layer's own fd. *fd is the fd to
 * close afterwards, or -1. */
static int open_xattr_path(struct ovl *fs, const struct node *n, char *path, size_t size, int *fd)
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

void ovl_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct ovl *fs = ovl_of(req);
	if (xattr_is_private(name)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	struct node *n = node_get(fs, ino);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	char path[PATH_MAX + 64];
	int fd;
	int res = open_xattr_path(fs, n, path, sizeof(path), &fd);
	node_put(fs, n);
	if (res < 0) {
		fuse_reply_err(req, -res);
		return;
	}
	char *buf = size ? malloc(size) : NULL;
	ssize_t len = (size && !buf) ? (errno = ENOMEM, -1) : lgetxattr(path, name, buf, size);
	int err = errno;
	if (fd >= 0)
		close(fd);
	if (len < 0)
		fuse_reply_err(req, err == ENOTSUP ? ENODATA : err);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)len);
	else
		fuse_reply_buf(req, buf, (size_t)len);
	free(buf);
}

void ovl_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct ovl *fs = ovl_of(req);
	struct node *n = node_get(fs, ino);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	char path[PATH_MAX + 64];
	int fd;
	int res = open_xattr_path(fs, n, path, sizeof(path), &fd);
	node_put(fs, n);
	if (res == -ENODATA) {
		fuse_reply_xattr(req, 0);
		return;
	}
	if (res < 0) {
		fuse_reply_err(req, -res);
		return;
	}
	/* The list is filtered, so read all of it, whatever size was asked. */
	ssize_t len = llistxattr(path, NULL, 0);
	char *all = len > 0 ? malloc((size_t)len) : NULL;
	if (len > 0 && all)
		len = llistxattr(path, all, (size_t)len);
	int err = len < 0 ? errno : (len > 0 && !all ? ENOMEM : 0);
	if (fd >= 0)
		close(fd);
	if (err) {
		free(all);
		fuse_reply_err(req, err == ENOTSUP ? 0 : err);
		return;
	}
	size_t out = 0;
	for (ssize_t i = 0; i < len;) {
		size_t l = strlen(all + i) + 1;
		if (!xattr_is_private(all + i)) {
			memmove(all + out, all + i, l);
			out += l;
		}
		i += (ssize_t)l;
	}
	if (size == 0)
		fuse_reply_xattr(req, out);
	else if (out > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, all, out);
	free(all);
}

void ovl_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	/* default_permissions: the kernel has checked modes already. */
	(void)mask;
	struct ovl *fs = ovl_of(req);
	struct node *n = node_get(fs, ino);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	node_put(fs, n);
	fuse_reply_err(req, 0);
}

void ovl_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct ovl *fs = ovl_of(req);
	(void)ino;
	struct statvfs sv = { 0 };
	const unsigned long bsize = 4096;
	uint64_t limit = fs->cfg.size;
	if (limit == 0) {
		/* Unlimited: like tmpfs, show what the machine could hold. */
		struct sysinfo si;
		if (sysinfo(&si) == 0)
			limit = (uint64_t)si.totalram * si.mem_unit / 2;
	}
	uint64_t used = __atomic_load_n(&fs->upper_bytes, __ATOMIC_RELAXED);
	uint64_t used_inodes = __atomic_load_n(&fs->upper_inodes, __ATOMIC_RELAXED);
	sv.f_bsize = bsize;
	sv.f_frsize = bsize;
	sv.f_blocks = limit / bsize;
	sv.f_bfree = sv.f_blocks > used / bsize ? sv.f_blocks - used / bsize : 0;
	sv.f_bavail = sv.f_bfree;
	uint64_t files = fs->cfg.nr_inodes ? fs->cfg.nr_inodes : limit / 1024;
	sv.f_files = files;
	sv.f_ffree = files > used_inodes ? files - used_inodes : 0;
	sv.f_favail = sv.f_ffree;
	sv.f_namemax = NAME_MAX;
	fuse_reply_statfs(req, &sv);
}

/* SPDX-License-Identifier: Apache-2.0 */
/* tmptree.h: a scratch tree for the fs unit tests — made under a mkdtemp
 * directory, named relative to it, removed at the end (by fds, not a
 * shell). Needs tap.h first (diag). */
#ifndef MEMOVERLAY_TMPTREE_H
#define MEMOVERLAY_TMPTREE_H

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A directory (S_IFDIR), or any node mknod(2) makes, at ROOT/REL. */
static inline void tmptree_make(const char *root, const char *rel, mode_t mode, dev_t dev)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", root, rel);
	int r = S_ISDIR(mode) ? mkdir(p, mode & 07777) : mknod(p, mode, dev);
	if (r < 0)
		diag("make %s: %s", rel, strerror(errno));
}

/* Empties the directory DFD (closed here), by fds: a tree deeper than
 * PATH_MAX (test_layer.c makes one) has no usable full paths. */
static inline int tmptree_empty(int dfd)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -1;
	}
	int res = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			continue;
		int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0 || tmptree_empty(sub) < 0 || unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0)
			res = -1;
	}
	closedir(d);
	return res;
}

/* Removes ROOT and everything below it. */
static inline void tmptree_remove(const char *root)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || tmptree_empty(fd) < 0 || rmdir(root) < 0)
		diag("cleanup of %s failed: %s", root, strerror(errno));
}

#endif

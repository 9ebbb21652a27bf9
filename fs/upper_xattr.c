/* SPDX-License-Identifier: Apache-2.0 */
/* upper_xattr.c: the xattrs of an upper inode — a small array; files
 * rarely carry more than a handful. The caller holds the node's lock. */
#include "memoverlay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

static ssize_t xattr_index(const struct upper *u, const char *name)
{
	for (size_t i = 0; i < u->nxattrs; i++)
		if (strcmp(u->xattrs[i].name, name) == 0)
			return (ssize_t)i;
	return -1;
}

const struct xattr *upper_xattr_get(const struct upper *u, const char *name)
{
	ssize_t i = xattr_index(u, name);
	return i < 0 ? NULL : &u->xattrs[i];
}

int upper_xattr_set(struct upper *u, const char *name, const void *value, size_t size, int flags)
{
	ssize_t i = xattr_index(u, name);
	if (i >= 0 && (flags & XATTR_CREATE))
		return -EEXIST;
	if (i < 0 && (flags & XATTR_REPLACE))
		return -ENODATA;
	void *copy = malloc(size ? size : 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, value, size);
	if (i >= 0) {
		free(u->xattrs[i].value);
		u->xattrs[i].value = copy;
		u->xattrs[i].size = size;
		return 0;
	}
	char *n = strdup(name);
	struct xattr *grown = n ? realloc(u->xattrs, (u->nxattrs + 1) * sizeof(*grown)) : NULL;
	if (!grown) {
		free(n);
		free(copy);
		return -ENOMEM;
	}
	u->xattrs = grown;
	u->xattrs[u->nxattrs++] = (struct xattr){ .name = n, .value = copy, .size = size };
	return 0;
}

int upper_xattr_remove(struct upper *u, const char *name)
{
	ssize_t i = xattr_index(u, name);
	if (i < 0)
		return -ENODATA;
	free(u->xattrs[i].name);
	free(u->xattrs[i].value);
	u->xattrs[i] = u->xattrs[--u->nxattrs];
	return 0;
}

void upper_xattrs_free(struct upper *u)
{
	for (size_t i = 0; i < u->nxattrs; i++) {
		free(u->xattrs[i].name);
		free(u->xattrs[i].value);
	}
	free(u->xattrs);
	u->xattrs = NULL;
	u->nxattrs = 0;
}

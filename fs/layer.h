/* SPDX-License-Identifier: Apache-2.0 */
/* layer.h: the read-only lower layers (layer.c) — every path resolved
 * beneath a layer's root, whiteout and opaque markers, and the lower
 * objects of a node. Needs no FUSE. */
#ifndef MEMOVERLAY_LAYER_H
#define MEMOVERLAY_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

struct layer {
	int root_fd;            /* O_PATH|O_DIRECTORY of the layer root */
	char *path;
	dev_t dev;
};

/* Opens `rel` ("" = root) beneath layer's root without following any symlink.
 * flags are open(2) flags; O_NOFOLLOW and O_CLOEXEC are added. -errno on failure. */
int layer_open(const struct layer *l, const char *rel, int flags);

/* What one layer says about a name inside one of its directories. */
enum lower_kind {
	LOWER_ABSENT,           /* nothing here, look further down */
	LOWER_WHITEOUT,         /* name deleted: stop, name does not exist */
	LOWER_FOUND,            /* st filled in */
};
enum lower_kind layer_probe(int dirfd, const char *name, struct stat *st);
/* Whether directory `name` in dirfd is opaque (xattr or .wh..wh..opq). */
bool layer_dir_is_opaque(int dirfd, const char *name);
/* Names that are overlay markers and never shown. */
bool layer_name_is_marker(const char *name);
/* What a marker name in a layer's directory hides: NAME for ".wh.NAME"
 * (the aufs/OCI whiteout), NULL for any other name, including the overlay's
 * own ".wh..wh.*" metadata. */
const char *layer_whiteout_target(const char *name);
/* Whether st is a kernel overlayfs whiteout (a char device 0/0). */
bool layer_stat_is_whiteout(const struct stat *st);
/* "a/b" + "c" → "a/b/c"; "" + "c" → "c". Caller frees. */
char *path_join(const char *dir, const char *name);

struct node;
struct ovl;
/* Opens layer_pos's lower object of node n (flags as open(2)); -ENOENT
 * when n has no such layer. */
int ovl_open_lower(struct ovl *fs, const struct node *n, int layer_pos, int flags);
/* The target of n's top lower symlink into buf (NUL-terminated; a longer
 * one is cut at size - 1, and PATH_MAX + 1 holds any). */
int ovl_read_lower_link(struct ovl *fs, const struct node *n, char *buf, size_t size);
/* A path for l*xattr(2) that reaches n's top lower object without following
 * symlinks in the layer; *fd (or -1) must be closed afterwards. */
int lower_xattr_path(struct ovl *fs, const struct node *n, char *path, size_t size, int *fd);
/* Calls fn for each xattr at path (an l*xattr(2) path, as above) but the
 * private ones, with its value when values (a malloc'ed copy fn keeps or
 * frees; NULL and 0 without); a name whose value cannot be read (gone
 * since the listing) is skipped. Stops at fn's first non-zero return and
 * returns it; 0 where the filesystem has no xattrs (ENOTSUP); -errno
 * when the listing fails. */
int xattrs_each(const char *path, bool values,
		int (*fn)(const char *name, char *value, size_t size, void *arg), void *arg);
/* Overlay bookkeeping xattrs (trusted.overlay.*, user.overlay.*): never
 * shown from a lower layer, never set by users. */
bool xattr_is_private(const char *name);

#endif

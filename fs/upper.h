/* SPDX-License-Identifier: Apache-2.0 */
/* upper.h: the in-memory upper layer (upper.c) — an upper inode's metadata,
 * its xattrs (upper_xattr.c), an upper directory's entries (dirmap), the
 * count of upper inodes. A file's data is upper_data.h's. */
#ifndef MEMOVERLAY_UPPER_H
#define MEMOVERLAY_UPPER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "config.h"
#include "upper_data.h"

struct node;
struct ovl;

struct xattr {
	char *name;
	void *value;
	size_t size;
};

/* FNV-1a of a name, for the hash tables of names: dirmap (upper.c) and
 * readdir.c's set of names already listed. */
static inline uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	return h;
}

/* One upper directory's entries: name -> child node, or a whiteout (NULL).
 * Every child named here holds one pin, taken and dropped by dirmap_*. */
struct dirmap_slot {
	char *name;             /* NULL: empty; TOMBSTONE: deleted */
	struct node *child;     /* NULL: whiteout */
};

struct dirmap {
	struct dirmap_slot *slots;
	size_t cap, used, live;   /* used counts tombstones too */
};

/* The upper copy of an inode: all metadata is virtual; a regular file's
 * data is upper_data.c's. */
struct upper {
	struct stat st;          /* mode, uid, gid, nlink, size, rdev, times */
	struct xattr *xattrs;
	size_t nxattrs;
	struct upper_data data;  /* regular files */
	bool opaque;             /* directory: lower entries are hidden */
	bool origin_pinned;      /* holds a pin for its other lower hard links */
	bool links_named;        /* those other names are entries of the upper too (writeback.c) */
	bool shown_changed;      /* data, mode, owner, times or xattrs changed, not only its names:
	                          * then its other lower names must be written too (lower_links.h) */
	dev_t origin_dev;        /* origin_pinned: the lower file it came from, where its */
	ino_t origin_ino;        /* other names are (the origin itself moves to upperdir=) */
	uint16_t origin_layer;
	bool kill_on_write;      /* passthrough=upper: setuid/setgid were set while the kernel
	                          * writes the file itself; its next write there clears them */
	bool counted;            /* counts against nr_inodes (until its last name goes) */
	bool wb_dirty;           /* changed since the last write-back to upperdir= (writeback.c):
	                          * set by upper_new and by every change of mtime or ctime */
	char *symlink;           /* symlink target */
	struct dirmap dir;       /* directories */
};

struct upper *upper_new(const struct stat *st);
void upper_free(struct ovl *fs, struct upper *u);
/* Counts one more upper inode against nr_inodes; -ENOSPC when full. */
int upper_inode_reserve(struct ovl *fs);
/* Its last name is gone: it no longer counts, as in tmpfs (open or not). */
void upper_inode_release(struct ovl *fs, struct upper *u);
/* A file with no name and no open handle: its data goes back at once, as in
 * tmpfs, not when the kernel forgets the inode. Caller holds n->lock. */
void upper_drop_unreachable_data(struct ovl *fs, struct node *n);
int upper_xattr_set(struct upper *u, const char *name, const void *value, size_t size, int flags);
const struct xattr *upper_xattr_get(const struct upper *u, const char *name);
int upper_xattr_remove(struct upper *u, const char *name);
void upper_xattrs_free(struct upper *u);
void upper_touch(struct upper *u, bool atime, bool mtime, bool ctime);
/* Where a regular file's data goes when it starts: a file of its own when
 * the mount backs upper files (passthrough=upper), else the filestore. */
void upper_use_files(struct ovl *fs, struct upper *u);
/* Its data starts empty there. n->lock held. */
void upper_start_empty(struct ovl *fs, struct upper *u);
/* Data in a file of its own (passthrough=upper) may have been written by
 * the kernel: size and times from that file, and the marks of a change,
 * when it moved. Returns UPPER_SYNC_* bits; *seen (when not NULL) gets the
 * file's stat when UPPER_SYNC_SEEN says it was had, so that a caller that
 * wants its size too needs no second stat. Caller holds the node's lock. */
#define UPPER_SYNC_DATA 1       /* the file was written */
#define UPPER_SYNC_KILLED 2     /* ... and that cleared setuid/setgid (kill_on_write) */
#define UPPER_SYNC_SEEN 4       /* *seen is the file's stat */
int upper_sync_file(struct upper *u, struct stat *seen);
/* A name of it was added, removed or moved: ctime, and nothing else it shows. */
void upper_touch_names(struct upper *u);
/* A read of the upper copy: atime per the mount's relatime/noatime/strictatime.
 * Lower-only objects keep their lower atime: nothing is written to a layer. */
bool upper_accessed(struct upper *u, enum atime_mode mode);   /* true: atime moved */

/* dirmap: lookups return true and set *child (NULL = whiteout) when present. */
bool dirmap_get(const struct dirmap *m, const char *name, struct node **child);
int dirmap_set(struct ovl *fs, struct dirmap *m, const char *name, struct node *child);
void dirmap_remove(struct ovl *fs, struct dirmap *m, const char *name);
void dirmap_clear(struct ovl *fs, struct dirmap *m);
/* Visits live entries (children and whiteouts). */
#define dirmap_for_each(m, s) \
	for (struct dirmap_slot *s = (m)->slots; s && s < (m)->slots + (m)->cap; s++) \
		if (s->name && s->name != DIRMAP_TOMBSTONE)
extern char dirmap_tombstone[];
#define DIRMAP_TOMBSTONE dirmap_tombstone

#endif

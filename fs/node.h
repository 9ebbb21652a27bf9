/* SPDX-License-Identifier: Apache-2.0 */
/* node.h: the node table (node.c) — every inode the kernel or the daemon
 * holds, its lower origin and its upper copy, and inode numbering. */
#ifndef MEMOVERLAY_NODE_H
#define MEMOVERLAY_NODE_H

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "passthrough.h"
#include "upper.h"

enum { LOWER_XATTRS_UNKNOWN, LOWER_XATTRS_NONE, LOWER_XATTRS_SOME };

struct node {
	fuse_ino_t ino;         /* FUSE nodeid and st_ino (root: nodeid 1) */
	uint64_t st_ino;        /* what stat shows */
	uint64_t nlookup;       /* kernel references, under table lock */
	uint32_t pins;          /* daemon references, under table lock */
	struct node *hash_next;
	mode_t type;            /* S_IFMT bits */
	uint64_t parent_ino;    /* st_ino of the directory it was found in (for "..") */
	struct node *parent;    /* where it was first found (pinned); NULL for root */
	char *name;             /* its name there */

	/* Lower origin, fixed at creation: the path below the layer roots and
	 * the layers (top first) that contribute. Non-directories use only
	 * lower[0]; a merged directory lists every layer down to an opaque one. */
	char *lpath;
	uint16_t *lower;
	uint16_t nlower;

	/* NULL until copied up; then set once and never cleared while the
	 * node lives. Set under n->lock with ns_lock held for writing
	 * (copy_up_meta), or before the node is in the table (upper_create,
	 * make_root). So it is read without n->lock: stable under ns_lock
	 * (either mode); without ns_lock it may turn non-NULL at any moment,
	 * and the upper copy's changing fields are read under n->lock. */
	struct upper *upper;
	bool lower_unlinked;    /* lower-only object whose one name is gone: nlink 0 */
	uint8_t lower_xattrs;   /* LOWER_XATTRS_*: what its lower file has, once known */
	uint32_t nopen;         /* open file handles, under lock */
	struct passthrough_node pt; /* how its opens are served, under lock */
	pthread_mutex_t lock;   /* guards upper contents (lock order: see struct ovl) */
};

struct ovl;

int node_table_init(struct ovl *fs);
void node_table_destroy(struct ovl *fs);
/* Finds the node with st_ino, or inserts `fresh` (taking ownership) and returns
 * it. The returned node has one more lookup when `lookup` is true. */
struct node *node_insert_or_get(struct ovl *fs, struct node *fresh, bool lookup);
struct node *node_get(struct ovl *fs, fuse_ino_t ino);  /* +1 pin, NULL if gone */
/* node_get for an op: when the node is gone, replies ENOENT and returns NULL. */
struct node *node_get_req(fuse_req_t req, fuse_ino_t ino);
void node_put(struct ovl *fs, struct node *n);          /* -1 pin */
/* One more lookup (lookup) or pin (!lookup) on a node the caller can reach. */
void node_ref(struct ovl *fs, struct node *n, bool lookup);
void node_unref(struct ovl *fs, struct node *n, bool lookup);
void node_forget(struct ovl *fs, fuse_ino_t ino, uint64_t nlookup);
struct node *node_new(mode_t type, const char *lpath, const uint16_t *lower, uint16_t nlower);
void node_free(struct ovl *fs, struct node *n);
/* Returns freed memory to the system after many nodes went away. */
void node_trim_memory(struct ovl *fs);
/* Sets parent and name (pins the new parent, unpins the old one). */
int node_set_parent(struct ovl *fs, struct node *n, struct node *parent, const char *name);
/* Pins taken and dropped while holding nothing else. */
void node_pin(struct ovl *fs, struct node *n);
/* A directory that merges lower directories (not opaque, not upper-only). */
bool node_is_merged_dir(const struct node *n);

/* Stable st_ino for a lower (dev, ino): composed from a small per-device index
 * and the lower inode number, so it is the same on every lookup and readdir. */
uint64_t ino_from_lower(struct ovl *fs, dev_t dev, ino_t ino);
uint64_t ino_alloc_upper(struct ovl *fs);

#endif

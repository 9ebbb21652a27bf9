/* SPDX-License-Identifier: Apache-2.0 */
/* lower_links.h: the other names of a copied-up lower hard link
 * (lower_links.c).
 *
 * A lower file with several names is one inode in the mount: every name
 * shows the new data once it is copied up. Only the names changed in the
 * upper are in its dirmaps; the others are still lower names. Whatever
 * writes the upper out (export.c, writeback.c) must write those too, or
 * they would keep the old data wherever the layers are read again. */
#ifndef MEMOVERLAY_LOWER_LINKS_H
#define MEMOVERLAY_LOWER_LINKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct node;
struct ovl;

/* A copied-up file and the lower file it came from. */
struct lower_link {
	dev_t dev;
	ino_t ino;
	uint16_t layer;         /* where its names are looked for */
	struct node *n;
};

/* Fills l: the lower file n was copied up from, or else n's lower file in
 * its first layer. 0, or -errno (no lower file). */
int lower_link_of(struct ovl *fs, struct node *n, struct lower_link *l);

/* Whether n was copied up with other lower names that still show it
 * (upper->origin_pinned) and what they show changed since
 * (upper->shown_changed): then those names must be written with it. A
 * name removed or added alone changes nothing they show but the link
 * count, which kernel overlayfs does not keep either. Takes n->lock. */
bool lower_links_wanted(struct node *n);

/* The copied-up files lower_links_wanted() says, but those skip(arg, n)
 * leaves out, each pinned, with its lower file: *out, given back with
 * lower_links_put. Caller holds ns_lock. 0 or -ENOMEM. */
int lower_links_copied_up(struct ovl *fs, bool (*skip)(void *arg, const struct node *n),
			  void *arg, struct lower_link **out, size_t *nout);
void lower_links_put(struct ovl *fs, struct lower_link *l, size_t n);

/* Walks each layer the targets name, once: for each name there of a
 * regular file t[i] (same st_dev and st_ino, in t[i].layer) that the
 * mount shows as t[i].n through that lower name (not through an upper
 * entry), calls found(arg, i, path, dir, name): dir, the merged directory
 * holding name, is pinned for the call. Caller holds ns_lock. 0, or the
 * first error of a walk or of found (which ends it). */
int lower_links_walk(struct ovl *fs, const struct lower_link *t, size_t nt,
		     int (*found)(void *arg, size_t i, const char *path, struct node *dir,
				  const char *name),
		     void *arg);

#endif

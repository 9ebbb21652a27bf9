/* SPDX-License-Identifier: Apache-2.0 */
/* export.h: the upper layer as an OCI image layer (export.c), for
 * `memoverlay-ctl export`. */
#ifndef MEMOVERLAY_EXPORT_H
#define MEMOVERLAY_EXPORT_H

#include <stdbool.h>

#include "tar_writer.h"

struct ovl;

/* Writes the upper layer to sink as a pax tar in OCI layer form: changed
 * and new objects with mode, owner, mtime, xattrs and hard links; removed
 * lower names as .wh.NAME; directories that do not merge the lower ones
 * at their place (new, opaque, renamed) as .wh..wh..opq followed by all
 * they show. The tree is taken at one instant (ns_lock for reading, while
 * the metadata is copied); each file's data at one instant of its own
 * (its node's lock, while it is copied aside), so a concurrent write is
 * wholly in or wholly out. No lock is held while the sink runs. Stops
 * early, with -ECANCELED, once *stop is set. 0 or -errno. */
int export_tar(struct ovl *fs, tar_sink sink, void *arg, const bool *stop);

#endif

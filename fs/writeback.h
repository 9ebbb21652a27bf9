/* SPDX-License-Identifier: Apache-2.0 */
/* writeback.h: upperdir=/workdir= (writeback.c) — the in-memory upper
 * layer written back into an upper directory in kernel overlayfs format.
 *
 * At mount the upper directory is the top layer (layer 0, read lazily
 * like any lower layer: whiteouts, .wh. names, opaque markers); changes
 * land in memory as always. A write-back brings the directory up to what
 * the mount shows, for everything changed since the last one (a dirty
 * mark per upper inode, upper.h), atomically per file: each object is made
 * complete in WORKDIR/work and renamed into place. */
#ifndef MEMOVERLAY_WRITEBACK_H
#define MEMOVERLAY_WRITEBACK_H

#include <stdbool.h>

struct ovl;

/* Layer index of the upper directory when there is one. */
#define UPPERDIR_LAYER 0

/* Sets up WORKDIR/work (made if missing, emptied of what a crashed
 * write-back left) and what the daemon may write (owners, device nodes,
 * trusted.* xattrs). Prints one line and returns -1 on failure. Nothing
 * to do without upperdir=. */
int writeback_init(struct ovl *fs);
void writeback_free(struct ovl *fs);
/* The owner and mode an object of the upper directory really has, when
 * they are kept in user.containers.override_stat (written by a daemon
 * that could not chown, memoverlay or fuse-overlayfs; read, as by
 * fuse-overlayfs, when the upper root carries it). path reaches the
 * object (FOLLOW: through a final /proc/self/fd link); LAYER is where it is. */
void upperdir_override_stat(const struct ovl *fs, int layer, const char *path, bool follow,
			    struct stat *st);
/* Writes every change since the last write-back. Takes ns_lock for
 * writing. 0 or -errno (the first failure; the rest is still tried, and
 * what failed stays marked dirty). */
int writeback_all(struct ovl *fs);
/* fsync(2)/fsyncdir(2) on the mount: writeback_all() unless volatile. */
int writeback_fsync(struct ovl *fs);
/* Whether there is an upper directory to write to (not a read-only mount). */
bool writeback_writable(const struct ovl *fs);

/* writeback_idle.c: writeback_all() once the mount has been quiet for
 * -o writeback_delay=MS with no file open for writing. Start when serving
 * (0 or -errno; nothing to do without a writable upperdir= or with
 * writeback_delay=off); stop before the last write-back (a pass under way
 * ends first). */
int writeback_idle_start(struct ovl *fs);
void writeback_idle_stop(struct ovl *fs);

#endif

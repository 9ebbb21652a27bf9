/* SPDX-License-Identifier: Apache-2.0 */
/*
 * passthrough: FUSE passthrough (Linux 6.9+, libfuse 3.17+) — the kernel
 * reads a file from a backing file itself, and the daemon sees no READ.
 *
 * Read-only mounts use it for lower files: there every open of a regular
 * file is a read-only open of a file whose data is wholly lower, backed by
 * its lower file. With -o passthrough=upper writable mounts use it for
 * upper files whose data is a file of their own (upper_files.h). The
 * reasons (the kernel's rules) are at the top of passthrough.c.
 *
 * The kernel puts each inode in one io mode at a time: opens backed by one
 * backing file (all the same one), or opens through its page cache, never
 * both (a mismatch fails the open with EIO). So opens are counted per node,
 * by kind, under n->lock.
 */
#ifndef MEMOVERLAY_PASSTHROUGH_H
#define MEMOVERLAY_PASSTHROUGH_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 314
#endif
#include <fuse_lowlevel.h>

/* The kernel's UAPI (linux/fuse.h, 6.9+), for system headers older than that. */
#ifndef FUSE_DEV_IOC_BACKING_OPEN
struct fuse_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define FUSE_DEV_IOC_MAGIC 229
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
#endif

enum passthrough_io {
	PT_IO_CACHED,   /* through the page cache and the daemon */
	PT_IO_BACKED,   /* passthrough to the node's backing file */
};

/* Per node, under n->lock (struct node embeds it). */
struct passthrough_node {
	int backing_id;         /* > 0 while nbacked > 0 */
	uint32_t nbacked;       /* open handles of each kind */
	uint32_t ncached;
	uint32_t nbacked_writers;       /* backed opens that may write (passthrough=upper):
					 * the kernel changes the file without telling us */
};

struct ovl;
struct node;

struct config;
/* Before anything is mounted: -o passthrough=upper on a writable mount
 * needs a build with passthrough (else one line on stderr and -1) and
 * root of the initial user namespace (else the option is dropped). */
int passthrough_check_upper(struct config *cfg);
/* Before the seccomp filter: whether this daemon may register backing
 * files (CAP_SYS_ADMIN in the initial user namespace). */
bool passthrough_allowed(void);
/* At INIT: asks for passthrough when the option, the build, the kernel and
 * the daemon's privileges allow; returns whether it did. The kernel refuses
 * passthrough together with the write cache: the caller must not ask for
 * FUSE_CAP_WRITEBACK_CACHE then. */
bool passthrough_init(struct ovl *fs, struct fuse_conn_info *conn);
/* Decides how an open (fi->flags) of n is served and sets fi->backing_id
 * and fi->keep_cache for it; lower_fd is the open's read-only
 * lower fd, or -1. Takes n->lock. Returns the kind, for passthrough_release. */
enum passthrough_io passthrough_open(struct ovl *fs, struct node *n, int lower_fd,
				     struct fuse_file_info *fi);
/* An open of that kind is gone (writer: it was opened for writing); the
 * last backed one unregisters the backing file. Caller holds n->lock. */
void passthrough_release(struct ovl *fs, struct node *n, enum passthrough_io io, bool writer);

#endif

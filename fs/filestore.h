/* SPDX-License-Identifier: Apache-2.0 */
/*
 * filestore: the data of every upper-layer file, carved out of ONE file
 * descriptor (a memfd, or an unlinked file in a user-given directory).
 *
 * Layout: each upper file owns a `struct fdata`, a sorted array of extents
 * mapping file ranges to store ranges, all multiples of FILESTORE_BLOCK.
 * Unmapped file blocks are holes and read as zeros. Store space is handed
 * out by an allocator shared by all files: the store grows by a high-water
 * mark; freed ranges are punched (FALLOC_FL_PUNCH_HOLE) so their memory goes
 * back to the kernel, kept in a coalesced free tree (first-fit in
 * O(log n)), and the high-water mark drops when the tail becomes free.
 *
 * Invariants kept by this module:
 *   - every allocated block that is not file data reads as zeros, including
 *     allocated bytes past fdata.size (so growing a file exposes zeros);
 *   - the limit (max_bytes) counts allocated blocks, like tmpfs;
 *   - an operation that fails with ENOSPC (limit reached) changes nothing.
 *
 * Locking: the allocator (struct filestore) is internally locked and may be
 * used from any thread. A `struct fdata` is NOT locked here: the caller must
 * serialise all calls on one fdata (one writer, or readers only), and must
 * keep holding that lock until a bufvec returned by fdata_read() has been
 * consumed (e.g. by fuse_reply_data), since its store ranges can be freed and
 * handed to another file as soon as the file is truncated or released.
 */
#ifndef MEMOVERLAY_FILESTORE_H
#define MEMOVERLAY_FILESTORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 314
#endif
#include <fuse_lowlevel.h>

#define FILESTORE_BLOCK 4096u
/* Largest file size / offset accepted (block aligned, fits in off_t). */
#define FILESTORE_MAX_SIZE ((uint64_t)INT64_MAX & ~(uint64_t)(FILESTORE_BLOCK - 1))

struct filestore;

/* File range [off, off+len) lives at store offset `store`. */
struct fextent {
	uint64_t off, store, len;
};

/* One upper file's data. The struct is owned by the caller; its contents are
 * managed here. Initialise with fdata_init(), free with fdata_release(). */
struct fdata {
	struct fextent *ext;   /* sorted by off, disjoint, merged when contiguous */
	size_t n, cap;
	uint64_t size;         /* file size in bytes (st_size) */
};

/* dir == NULL: memfd; else an unlinked file in dir (O_TMPFILE, fallback
 * mkstemp+unlink). max_bytes 0 = unlimited (rounded down to blocks).
 * On failure fills err with one line and returns -errno. */
int filestore_create(struct filestore **out, const char *dir, uint64_t max_bytes,
		     char *err, size_t errlen);
void filestore_destroy(struct filestore *fstore);
int filestore_fd(const struct filestore *fstore);
uint64_t filestore_used(const struct filestore *fstore);   /* bytes allocated to files */
uint64_t filestore_limit(const struct filestore *fstore);  /* max_bytes, 0 = unlimited */

/* A second store of upper data under the same limit (upper_files.h): its
 * use counts against max_bytes here, and it is told (fit) the room our use
 * leaves it, so that neither takes the sum past the limit. Called under the
 * store's lock: they must take no lock of the daemon's. */
struct filestore_neighbour {
	uint64_t (*used)(void *arg);
	int (*fit)(void *arg, uint64_t room);
};
void filestore_share_limit(struct filestore *fstore, const struct filestore_neighbour *nb,
			   void *arg);

/* Helpers beyond the core contract (statistics, tests). */
uint64_t filestore_hwm(const struct filestore *fstore);        /* store high-water mark, bytes */
size_t filestore_free_ranges(const struct filestore *fstore);  /* nodes in the free tree */
/* Checks the allocator's internal invariants; 0 or -EUCLEAN (+ message in err). */
int filestore_check(const struct filestore *fstore, char *err, size_t errlen);
/* Calls cb(store, len, arg) for every free range, ascending. Not for hot paths. */
void filestore_foreach_free(const struct filestore *fstore,
			    void (*cb)(uint64_t store, uint64_t len, void *arg), void *arg);

void fdata_init(struct fdata *d);
/* Frees all blocks and the extent array; d is empty and reusable after. */
void fdata_release(struct filestore *fstore, struct fdata *d);

/* Returns len or -errno; extends size. -ENOSPC (nothing written) if the
 * blocks needed exceed the limit. A failure after some bytes were written
 * returns the short count. */
ssize_t fdata_write(struct filestore *fstore, struct fdata *d, const void *buf, size_t len,
		    uint64_t off);
/* Same, source is a fuse_bufvec (memory, or an fd such as a splice pipe). The
 * source is consumed from its current idx/off. */
ssize_t fdata_write_bufvec(struct filestore *fstore, struct fdata *d, struct fuse_bufvec *src,
			   uint64_t off);

/* Builds a malloc'd bufvec for [off, off+len) clipped at d->size: mapped
 * ranges are FUSE_BUF_IS_FD|FUSE_BUF_FD_SEEK segments on the store fd, holes
 * are memory segments pointing at a static zero area (never write to it).
 * Caller frees *out with free(). Returns 0 or -errno. */
int fdata_read(struct filestore *fstore, const struct fdata *d, uint64_t off, size_t len,
	       struct fuse_bufvec **out);

/* Shrink frees whole blocks past size and zeroes the tail of the last
 * partial block; grow just sets size (sparse). */
int fdata_truncate(struct filestore *fstore, struct fdata *d, uint64_t size);

/* mode: 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE,
 * FALLOC_FL_ZERO_RANGE[|FALLOC_FL_KEEP_SIZE]; others -EOPNOTSUPP.
 * len == 0 is -EINVAL. ENOSPC changes nothing. */
int fdata_fallocate(struct filestore *fstore, struct fdata *d, int mode, uint64_t off,
		    uint64_t len);

/* SEEK_DATA / SEEK_HOLE at block granularity with lseek(2)'s -ENXIO rules;
 * other whence values -EINVAL. */
int64_t fdata_seek(const struct fdata *d, int64_t off, int whence);

/* Copy-up: replaces d's contents with [0,len) of srcfd (copy_file_range,
 * fallback pread/pwrite), keeping holes sparse when SEEK_DATA/SEEK_HOLE work
 * on srcfd (this moves srcfd's file offset). Sets size = len. If srcfd is
 * shorter than len the rest reads as zeros. On any error (ENOSPC included)
 * d is unchanged. */
int fdata_copy_from_fd(struct filestore *fstore, struct fdata *d, int srcfd, uint64_t len);

/* copy_file_range between two upper files; src may equal dst (ranges must not
 * overlap then: -EINVAL). Clipped at src->size; returns bytes copied or
 * -errno; extends dst->size. */
ssize_t fdata_copy_range(struct filestore *fstore, struct fdata *dst, uint64_t dst_off,
			 const struct fdata *src, uint64_t src_off, size_t len);

/* Allocated bytes / 512, for st_blocks. */
uint64_t fdata_blocks(const struct fdata *d);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * upper_data: the data of one upper regular file — its bytes (filestore
 * extents, or a file of their own), the cow map of a lazy copy-up, and
 * whether the data is up at all. Nobody else touches those: file.c,
 * inode.c and copy_up.c ask this module.
 *
 * States: not up (a metadata-only copy-up: the bytes are the lower file's),
 * lazily up (the store has the right size and what was written; the rest
 * below cow.lower_end is still read from the lower file, see cow.h), and
 * wholly up (the store alone holds the file).
 *
 * Where the bytes are: the filestore (struct fdata), or, with
 * -o passthrough=upper, a file of their own in the private tmpfs
 * (upper_files.h, upper_data_file.c), which the kernel may read and write
 * itself as the backing file of the inode's opens once it is wholly up
 * (upper_data_backable). upper_data_use_files() before the data starts
 * chooses the file; the data stays in it to the end, so it never moves
 * while the kernel might hold it as a backing file. Its size and times are
 * then the tmpfs file's (upper_data_file_sync). A lazy copy-up there is a
 * sparse file with the same cow map.
 *
 * Needs no node and no layer: where a lower file is read, the caller passes
 * an fd open on it. Not locked: the caller holds the node's lock, and keeps
 * it until a bufvec from upper_data_read() has been consumed (see filestore.h).
 */
#ifndef MEMOVERLAY_UPPER_DATA_H
#define MEMOVERLAY_UPPER_DATA_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cow.h"
#include "filestore.h"
#include "upper_files.h"

struct upper_data {
	struct fdata store;     /* the bytes in the filestore, unless in a file */
	struct cow_map cow;     /* lazily up: bytes still read from the lower file */
	bool up;                /* the data is upper */
	struct upper_files *files;      /* where the bytes go when the data starts, */
	uint64_t file;                  /* and their file there once it has (0: none) */
	off_t seen_size;        /* the file's size and mtime when last looked at */
	struct timespec seen_mtime;
};

/* Not up, nothing stored. */
void upper_data_init(struct upper_data *d);
/* When its data starts (not up yet), it starts in a file of its own in uf. */
void upper_data_use_files(struct upper_data *d, struct upper_files *uf);
/* Gives the store space back; the data is gone (a file nobody can reach). */
void upper_data_release(struct filestore *fstore, struct upper_data *d);

bool upper_data_is_up(const struct upper_data *d);
/* Whether a read may need the lower file: not up, or only lazily. */
bool upper_data_reads_lower(const struct upper_data *d);
/* Only meaningful when up. */
uint64_t upper_data_size(const struct upper_data *d);
/* st_blocks when up: the store's blocks, and bytes still in the lower file
 * as whole blocks. */
uint64_t upper_data_blocks(const struct upper_data *d);
/* Both, from `file` when not NULL: the stat of d's file that
 * upper_data_file_sync just gave (one stat, not two more). */
void upper_data_sizes(const struct upper_data *d, const struct stat *file, uint64_t *size,
		      uint64_t *blocks);

/* Up, without reading the lower file: empty (a new file, O_TRUNC, a
 * truncate to 0; data in a file stays there, emptied) ... */
int upper_data_start_empty(struct filestore *fstore, struct upper_data *d);
/* ... lazily, as a sparse copy of `size` bytes whose unwritten bytes are
 * read from the lower file (exclusive access: it never changes) ... */
int upper_data_start_lazy(struct filestore *fstore, struct upper_data *d, uint64_t size);
/* ... or copied whole from lower_fd now (shared access). */
int upper_data_start_copy(struct filestore *fstore, struct upper_data *d, int lower_fd,
			  uint64_t size);
/* Finishes a lazy copy-up: the store then holds the whole file, contiguous
 * where it has data. For operations on the store copy alone (SEEK_DATA),
 * and when scattered writes fragment it. On error (ENOSPC) nothing changes. */
int upper_data_finish(struct filestore *fstore, struct upper_data *d, int lower_fd);

/* The file's data, for one read reply: store ranges and, when lazily up,
 * lower_fd ranges. Must be up. Caller frees *out (see the header comment). */
int upper_data_read(struct filestore *fstore, const struct upper_data *d, int lower_fd,
		    uint64_t off, size_t size, struct fuse_bufvec **out);
/* The changes; each must be up (-EBADF if not) and changes nothing on
 * failure. write and copy_range return bytes written. write finishes the
 * copy-up when scattered writes have fragmented the cow map. */
ssize_t upper_data_write(struct filestore *fstore, struct upper_data *d, struct fuse_bufvec *src,
			 uint64_t off, int lower_fd);
/* size 0 needs no copy-up first: it starts the data empty. */
int upper_data_truncate(struct filestore *fstore, struct upper_data *d, uint64_t size);
int upper_data_fallocate(struct filestore *fstore, struct upper_data *d, int mode, uint64_t off,
			 uint64_t len);
/* -EOPNOTSUPP while src still reads its lower file: the kernel then copies
 * through read and write. */
ssize_t upper_data_copy_range(struct filestore *fstore, struct upper_data *dst, uint64_t dst_off,
			      const struct upper_data *src, uint64_t src_off, size_t len);
/* Data in a file of its own ... */
bool upper_data_in_file(const struct upper_data *d);
/* ... and wholly there: the kind passthrough.c may back. */
bool upper_data_backable(const struct upper_data *d);
/* An fd on that file (flags: O_RDWR ...), or -errno. */
int upper_data_file_open(const struct upper_data *d, int flags);
/* The kernel writes such a file itself: returns 1 and fills st (size, mtime,
 * ctime, blocks) when its size or mtime moved since the last call, 0 when
 * not, -errno. */
int upper_data_file_sync(struct upper_data *d, struct stat *st);

/* SEEK_DATA / SEEK_HOLE over the store copy; finishes a lazy copy-up first. */
int64_t upper_data_seek(struct filestore *fstore, struct upper_data *d, int lower_fd, int64_t off,
			int whence);

#endif

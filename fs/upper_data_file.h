/* SPDX-License-Identifier: Apache-2.0 */
/*
 * upper_data_file: upper_data's second kind of storage (upper_data.h) —
 * the bytes in a file of their own in passthrough=upper's private tmpfs
 * (upper_files.h) instead of the filestore. Only upper_data.c calls these;
 * it keeps the cow map of a lazy copy-up for both kinds alike, and these
 * read the lower file where the map says so.
 *
 * Each call opens the file by name and closes it again: the daemon holds
 * no fd per file. Reads come back in memory, so no fd outlives a call.
 */
#ifndef MEMOVERLAY_UPPER_DATA_FILE_H
#define MEMOVERLAY_UPPER_DATA_FILE_H

#include "upper_data.h"

/* A new sparse file of `size` bytes; with lower_fd >= 0 its data copied in
 * (holes stay holes). On failure nothing is left behind. */
int ufile_start(struct upper_data *d, uint64_t size, int lower_fd);
uint64_t ufile_size(const struct upper_data *d);
uint64_t ufile_blocks(const struct upper_data *d);
int ufile_read(const struct upper_data *d, int lower_fd, uint64_t off, size_t size,
	       struct fuse_bufvec **out);
ssize_t ufile_write(struct upper_data *d, struct fuse_bufvec *src, uint64_t off);
int ufile_truncate(struct upper_data *d, uint64_t size);
int ufile_fallocate(struct upper_data *d, int mode, uint64_t off, uint64_t len);
/* Copies into the file what the cow map still reads from lower_fd. */
int ufile_fill_from_lower(struct upper_data *d, int lower_fd);
ssize_t ufile_copy_range(struct upper_data *dst, uint64_t dst_off, const struct upper_data *src,
			 uint64_t src_off, size_t len);
int64_t ufile_seek(const struct upper_data *d, int64_t off, int whence);
/* Remembers the file's size and mtime as this daemon left it (see
 * upper_data_file_sync). */
void ufile_seen(struct upper_data *d);

#endif

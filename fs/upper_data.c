/* SPDX-License-Identifier: Apache-2.0 */
/* upper_data.c: one upper file's data — where its bytes are (filestore
 * extents, or a file of their own: upper_data_file.c), the cow map of a
 * lazy copy-up, and whether it is up (see upper_data.h). */
#include "upper_data.h"
#include "upper_data_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

void upper_data_init(struct upper_data *d)
{
	fdata_init(&d->store);
	cow_init(&d->cow);
	d->up = false;
	d->files = NULL;
	d->file = 0;
	d->seen_size = 0;
	d->seen_mtime = (struct timespec){ 0 };
}

void upper_data_use_files(struct upper_data *d, struct upper_files *uf)
{
	if (!d->up)
		d->files = uf;
}

void upper_data_release(struct filestore *fstore, struct upper_data *d)
{
	fdata_release(fstore, &d->store);
	cow_reset(&d->cow);
	if (d->file) {
		upper_files_remove(d->files, d->file);
		d->file = 0;
	}
}

/* The bytes are in a file of their own. */
static bool in_file(const struct upper_data *d)
{
	return d->file != 0;
}

bool upper_data_in_file(const struct upper_data *d)
{
	return in_file(d);
}

bool upper_data_backable(const struct upper_data *d)
{
	return in_file(d) && d->cow.lower_end == 0;
}

int upper_data_file_open(const struct upper_data *d, int flags)
{
	return in_file(d) ? upper_files_open(d->files, d->file, flags) : -EBADF;
}

int upper_data_file_sync(struct upper_data *d, struct stat *st)
{
	if (!in_file(d))
		return 0;
	int res = upper_files_stat(d->files, d->file, st);
	if (res < 0)
		return res;
	if (st->st_size == d->seen_size && st->st_mtim.tv_sec == d->seen_mtime.tv_sec &&
	    st->st_mtim.tv_nsec == d->seen_mtime.tv_nsec)
		return 0;
	d->seen_size = st->st_size;
	d->seen_mtime = st->st_mtim;
	return 1;
}

bool upper_data_is_up(const struct upper_data *d)
{
	return d->up;
}

bool upper_data_reads_lower(const struct upper_data *d)
{
	return !d->up || d->cow.lower_end;
}

uint64_t upper_data_size(const struct upper_data *d)
{
	return in_file(d) ? ufile_size(d) : d->store.size;
}

/* own: the blocks of d's own store; the bytes still in the lower file
 * count as whole blocks on top */
static uint64_t with_lower_blocks(const struct upper_data *d, uint64_t own)
{
	uint64_t lower = cow_lower_bytes(&d->cow);
	return own + (lower + FILESTORE_BLOCK - 1) / FILESTORE_BLOCK * (FILESTORE_BLOCK / 512);
}

uint64_t upper_data_blocks(const struct upper_data *d)
{
	return with_lower_blocks(d, in_file(d) ? ufile_blocks(d) : fdata_blocks(&d->store));
}

void upper_data_sizes(const struct upper_data *d, const struct stat *file, uint64_t *size,
		      uint64_t *blocks)
{
	if (!file) {
		*size = upper_data_size(d);
		*blocks = upper_data_blocks(d);
		return;
	}
	*size = (uint64_t)file->st_size;
	*blocks = with_lower_blocks(d, (uint64_t)file->st_blocks);
}

/* Up, sized `size`, with lower_fd's data copied in when >= 0: in a file
 * of its own when upper_data_use_files asked for it, else in the store. */
static int start(struct filestore *fstore, struct upper_data *d, uint64_t size, int lower_fd)
{
	if (d->files)
		return ufile_start(d, size, lower_fd);
	return lower_fd >= 0 ? fdata_copy_from_fd(fstore, &d->store, lower_fd, size)
			     : fdata_truncate(fstore, &d->store, size);
}

int upper_data_start_empty(struct filestore *fstore, struct upper_data *d)
{
	if (in_file(d)) {
		/* stays where the kernel may hold it as a backing file */
		int res = ufile_truncate(d, 0);
		if (res == 0)
			cow_reset(&d->cow);
		return res;
	}
	upper_data_release(fstore, d);
	int res = start(fstore, d, 0, -1);
	if (res == 0)
		d->up = true;
	return res;
}

int upper_data_start_lazy(struct filestore *fstore, struct upper_data *d, uint64_t size)
{
	if (d->up)
		return 0;
	/* A sparse copy of the right size: a first write into a 1 GiB file
	 * costs one small write, not a 1 GiB copy. */
	int res = start(fstore, d, size, -1);
	if (res == 0) {
		d->cow.lower_end = size;
		d->up = true;
	}
	return res;
}

int upper_data_start_copy(struct filestore *fstore, struct upper_data *d, int lower_fd,
			  uint64_t size)
{
	if (d->up)
		return 0;
	int res = start(fstore, d, size, lower_fd);
	if (res == 0)
		d->up = true;
	return res;
}

/* Copies [a, b) of src over the same range of dst. */
static int copy_range_all(struct filestore *fstore, struct fdata *dst, const struct fdata *src,
			  uint64_t a, uint64_t b)
{
	while (a < b) {
		ssize_t r = fdata_copy_range(fstore, dst, a, src, a, (size_t)(b - a));
		if (r <= 0)
			return r < 0 ? (int)r : -EIO;
		a += (uint64_t)r;
	}
	return 0;
}

/* The lower file is copied whole (sparse, in the kernel) into a fresh fdata,
 * then what was written is copied over it: written ranges below lower_end,
 * and the data (not the holes) past it. The fresh copy is contiguous, so
 * later writes land in place instead of adding extents. */
static int finish_store(struct filestore *fstore, struct upper_data *d, int lower_fd)
{
	const struct fdata *old = &d->store;
	uint64_t end = d->cow.lower_end;
	struct fdata nd;
	fdata_init(&nd);
	int res = fdata_copy_from_fd(fstore, &nd, lower_fd, end);
	for (size_t k = 0; res == 0 && k < d->cow.n; k++)
		res = copy_range_all(fstore, &nd, old, d->cow.up[k].a, d->cow.up[k].b);
	for (size_t k = 0; res == 0 && k < old->n; k++) {
		uint64_t a = old->ext[k].off, b = a + old->ext[k].len;
		if (b > old->size)
			b = old->size;
		if (b > end)
			res = copy_range_all(fstore, &nd, old, a > end ? a : end, b);
	}
	if (res == 0)
		res = fdata_truncate(fstore, &nd, old->size);
	if (res < 0) {
		fdata_release(fstore, &nd);
		return res;
	}
	fdata_release(fstore, &d->store);
	d->store = nd;
	return 0;
}

int upper_data_finish(struct filestore *fstore, struct upper_data *d, int lower_fd)
{
	if (!d->up || d->cow.lower_end == 0)
		return 0;
	/* whoever made it lazy opened the lower file, and keeps it open */
	if (lower_fd < 0)
		return -EBADF;
	/* a file of its own is filled in place: what it copies are the bytes
	 * the file showed already, so a failure halfway changes nothing */
	int res = in_file(d) ? ufile_fill_from_lower(d, lower_fd) : finish_store(fstore, d, lower_fd);
	if (res == 0)
		cow_reset(&d->cow);
	return res;
}

static int bufvec_append(struct fuse_bufvec **bv, size_t *cap, const struct fuse_buf *b)
{
	struct fuse_bufvec *v = *bv;
	if (!v || v->count == *cap) {
		size_t ncap = *cap ? 2 * *cap : 4;
		v = realloc(v, sizeof(*v) + (ncap - 1) * sizeof(struct fuse_buf));
		if (!v)
			return -ENOMEM;
		if (!*bv)
			*v = (struct fuse_bufvec){ .count = 0 };
		*bv = v;
		*cap = ncap;
	}
	v->buf[v->count++] = *b;
	return 0;
}

/* A read of a lazily copied-up file, in one reply: written bytes from the
 * filestore, the rest from the lower file. */
static int read_lazy(struct filestore *fstore, const struct upper_data *d, int lower_fd,
		     uint64_t off, size_t size, struct fuse_bufvec **out)
{
	uint64_t end = off + size > d->store.size ? d->store.size : off + size;
	if (off >= end)
		return fdata_read(fstore, &d->store, off, 0, out);
	struct fuse_bufvec *bv = NULL;
	size_t cap = 0;
	int res = 0;
	for (uint64_t pos = off; res == 0 && pos < end;) {
		bool lower;
		uint64_t stop = cow_span(&d->cow, pos, &lower);
		if (stop > end)
			stop = end;
		if (lower) {
			struct fuse_buf b = { .size = (size_t)(stop - pos),
					      .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK,
					      .fd = lower_fd, .pos = (off_t)pos };
			res = lower_fd < 0 ? -EIO : bufvec_append(&bv, &cap, &b);
		} else {
			struct fuse_bufvec *part = NULL;
			res = fdata_read(fstore, &d->store, pos, (size_t)(stop - pos), &part);
			for (size_t k = 0; res == 0 && k < part->count; k++)
				res = bufvec_append(&bv, &cap, &part->buf[k]);
			free(part);
		}
		pos = stop;
	}
	if (res < 0) {
		free(bv);
		return res;
	}
	*out = bv;
	return 0;
}

int upper_data_read(struct filestore *fstore, const struct upper_data *d, int lower_fd,
		    uint64_t off, size_t size, struct fuse_bufvec **out)
{
	if (!d->up)
		return -EBADF;
	if (in_file(d))
		return ufile_read(d, lower_fd, off, size, out);
	if (d->cow.lower_end)
		return read_lazy(fstore, d, lower_fd, off, size, out);
	return fdata_read(fstore, &d->store, off, size, out);
}

ssize_t upper_data_write(struct filestore *fstore, struct upper_data *d, struct fuse_bufvec *src,
			 uint64_t off, int lower_fd)
{
	if (!d->up)
		return -EBADF;
	ssize_t res = cow_reserve(&d->cow);
	if (res == 0)
		res = in_file(d) ? ufile_write(d, src, off)
				 : fdata_write_bufvec(fstore, &d->store, src, off);
	if (res <= 0)
		return res;
	cow_mark(&d->cow, off, off + (uint64_t)res);
	/* many scattered writes: the next ones should land in place */
	if (cow_fragmented(&d->cow) && upper_data_finish(fstore, d, lower_fd) < 0)
		cow_backoff(&d->cow);
	return res;
}

int upper_data_truncate(struct filestore *fstore, struct upper_data *d, uint64_t size)
{
	if (size == 0)
		return upper_data_start_empty(fstore, d);
	if (!d->up)
		return -EBADF;
	int res = in_file(d) ? ufile_truncate(d, size) : fdata_truncate(fstore, &d->store, size);
	if (res == 0)
		cow_truncate(&d->cow, size);
	return res;
}

int upper_data_fallocate(struct filestore *fstore, struct upper_data *d, int mode, uint64_t off,
			 uint64_t len)
{
	if (!d->up)
		return -EBADF;
	int res = cow_reserve(&d->cow);
	if (res == 0)
		res = in_file(d) ? ufile_fallocate(d, mode, off, len)
				 : fdata_fallocate(fstore, &d->store, mode, off, len);
	/* zeroed bytes are the file's now; merely allocated ones are not */
	if (res == 0 && (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)))
		cow_mark(&d->cow, off, off + len);
	return res;
}

ssize_t upper_data_copy_range(struct filestore *fstore, struct upper_data *dst, uint64_t dst_off,
			      const struct upper_data *src, uint64_t src_off, size_t len)
{
	if (!dst->up)
		return -EBADF;
	if (upper_data_reads_lower(src))
		return -EOPNOTSUPP;
	/* between a file of its own and the store: the kernel copies through
	 * read and write */
	if (in_file(dst) != in_file(src))
		return -EOPNOTSUPP;
	ssize_t res = cow_reserve(&dst->cow);
	if (res == 0)
		res = in_file(dst) ? ufile_copy_range(dst, dst_off, src, src_off, len)
				   : fdata_copy_range(fstore, &dst->store, dst_off, &src->store,
						      src_off, len);
	if (res > 0)
		cow_mark(&dst->cow, dst_off, dst_off + (uint64_t)res);
	return res;
}

int64_t upper_data_seek(struct filestore *fstore, struct upper_data *d, int lower_fd, int64_t off,
			int whence)
{
	if (!d->up)
		return -EBADF;
	int res = upper_data_finish(fstore, d, lower_fd);
	if (res < 0)
		return res;
	return in_file(d) ? ufile_seek(d, off, whence) : fdata_seek(&d->store, off, whence);
}

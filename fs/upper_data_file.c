/* SPDX-License-Identifier: Apache-2.0 */
/* upper_data_file.c: an upper file's bytes in a file of their own in the
 * private tmpfs of passthrough=upper (see upper_data_file.h). */
#include "upper_data_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define COPY_BUF ((size_t)256 << 10)

static int file_open(const struct upper_data *d, int flags)
{
	return upper_files_open(d->files, d->file, flags);
}

void ufile_seen(struct upper_data *d)
{
	struct stat st;
	(void)upper_data_file_sync(d, &st);
}

/* pread until len bytes or the end of the file; the rest reads as zeros. */
static int pread_full(int fd, char *buf, size_t len, uint64_t off)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, buf + got, len - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	memset(buf + got, 0, len - got);
	return 0;
}

/* [a, b) of in to the same offsets of out: in the kernel where it can,
 * else through a buffer. Stops early at the end of in. */
static int copy_bytes(int in, int out, uint64_t a, uint64_t b)
{
	while (a < b) {
		loff_t ia = (loff_t)a, oa = (loff_t)a;
		ssize_t r = copy_file_range(in, &ia, out, &oa, (size_t)(b - a), 0);
		if (r > 0) {
			a += (uint64_t)r;
			continue;
		}
		if (r == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EXDEV && errno != EINVAL && errno != EOPNOTSUPP && errno != ENOSYS)
			return -errno;
		break; /* across filesystems the kernel may refuse: copy by hand */
	}
	if (a >= b)
		return 0;
	char *buf = malloc(COPY_BUF);
	if (!buf)
		return -ENOMEM;
	int res = 0;
	while (res == 0 && a < b) {
		size_t want = b - a < COPY_BUF ? (size_t)(b - a) : COPY_BUF;
		ssize_t r = pread(in, buf, want, (off_t)a);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			res = r < 0 ? -errno : 0;
			break;
		}
		for (ssize_t w = 0; res == 0 && w < r;) {
			ssize_t k = pwrite(out, buf + w, (size_t)(r - w), (off_t)a + w);
			if (k < 0 && errno != EINTR)
				res = -errno;
			else if (k > 0)
				w += k;
		}
		a += (uint64_t)r;
		if ((size_t)r < want)
			break;
	}
	free(buf);
	return res;
}

/* The data (not the holes) of [a, b) of in, to the same offsets of out. */
static int copy_data(int in, int out, uint64_t a, uint64_t b)
{
	while (a < b) {
		off_t data = lseek(in, (off_t)a, SEEK_DATA);
		if (data < 0)
			return errno == ENXIO ? 0 : copy_bytes(in, out, a, b);
		if ((uint64_t)data >= b)
			return 0;
		off_t hole = lseek(in, data, SEEK_HOLE);
		uint64_t end = hole < 0 || (uint64_t)hole > b ? b : (uint64_t)hole;
		int res = copy_bytes(in, out, (uint64_t)data, end);
		if (res < 0)
			return res;
		a = end;
	}
	return 0;
}

/* The end of a change through fd: closed, the file's new size and mtime
 * remembered as ours, and tmpfs' EFBIG (past its size=) said as ENOSPC. */
static ssize_t changed(struct upper_data *d, int fd, ssize_t res)
{
	close(fd);
	ufile_seen(d);
	return res == -EFBIG ? -ENOSPC : res;
}

int ufile_start(struct upper_data *d, uint64_t size, int lower_fd)
{
	uint64_t id;
	int res = upper_files_new(d->files, &id);
	if (res < 0)
		return res;
	int fd = upper_files_open(d->files, id, O_WRONLY);
	if (fd < 0)
		res = fd;
	else if (size && ftruncate(fd, (off_t)size) < 0)
		res = -errno;
	else if (lower_fd >= 0)
		res = copy_data(lower_fd, fd, 0, size);
	if (fd >= 0)
		close(fd);
	if (res < 0) {
		upper_files_remove(d->files, id);
		return res == -EFBIG ? -ENOSPC : res;
	}
	d->file = id;
	ufile_seen(d);
	return 0;
}

/* The file's stat; zeros if it cannot be had (it reads as empty then: only
 * a lack of memory could do that). */
static struct stat file_stat(const struct upper_data *d)
{
	struct stat st;
	if (upper_files_stat(d->files, d->file, &st) < 0)
		st = (struct stat){ 0 };
	return st;
}

uint64_t ufile_size(const struct upper_data *d)
{
	return (uint64_t)file_stat(d).st_size;
}

uint64_t ufile_blocks(const struct upper_data *d)
{
	return (uint64_t)file_stat(d).st_blocks;
}

int ufile_read(const struct upper_data *d, int lower_fd, uint64_t off, size_t size,
	       struct fuse_bufvec **out)
{
	int fd = file_open(d, O_RDONLY);
	if (fd < 0)
		return fd;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	uint64_t fsize = (uint64_t)st.st_size;
	size_t len = off >= fsize ? 0 : fsize - off < size ? (size_t)(fsize - off) : size;
	struct fuse_bufvec *bv = malloc(sizeof(*bv) + len);
	if (!bv) {
		close(fd);
		return -ENOMEM;
	}
	char *buf = (char *)(bv + 1);
	int res = 0;
	for (uint64_t pos = off; res == 0 && pos < off + len;) {
		bool lower = false;
		uint64_t stop = d->cow.lower_end ? cow_span(&d->cow, pos, &lower) : UINT64_MAX;
		if (stop > off + len)
			stop = off + len;
		if (lower && lower_fd < 0)
			res = -EIO;
		else
			res = pread_full(lower ? lower_fd : fd, buf + (pos - off), (size_t)(stop - pos),
					 pos);
		pos = stop;
	}
	close(fd);
	if (res < 0) {
		free(bv);
		return res;
	}
	*bv = (struct fuse_bufvec)FUSE_BUFVEC_INIT(len);
	bv->buf[0].mem = buf;
	*out = bv;
	return 0;
}

ssize_t ufile_write(struct upper_data *d, struct fuse_bufvec *src, uint64_t off)
{
	int fd = file_open(d, O_WRONLY);
	if (fd < 0)
		return fd;
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(fuse_buf_size(src));
	dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	dst.buf[0].fd = fd;
	dst.buf[0].pos = (off_t)off;
	return changed(d, fd, fuse_buf_copy(&dst, src, 0));
}

int ufile_truncate(struct upper_data *d, uint64_t size)
{
	int fd = file_open(d, O_WRONLY);
	if (fd < 0)
		return fd;
	return (int)changed(d, fd, ftruncate(fd, (off_t)size) < 0 ? -errno : 0);
}

/* tmpfs has no FALLOC_FL_ZERO_RANGE. The same bytes and blocks: the range
 * allocated first (where ENOSPC must leave the data alone), the part
 * inside the file punched to zeros and allocated again, and the size then
 * extended as an allocation without KEEP_SIZE would. */
int ufile_fallocate(struct upper_data *d, int mode, uint64_t off, uint64_t len)
{
	int fd = file_open(d, O_WRONLY);
	if (fd < 0)
		return fd;
	int res = 0;
	if (mode & FALLOC_FL_ZERO_RANGE) {
		struct stat st;
		if (fstat(fd, &st) < 0 ||
		    fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0) {
			res = -errno;
		} else {
			uint64_t size = (uint64_t)st.st_size;
			uint64_t end = off + len < size ? off + len : size;
			if (off < end && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						   (off_t)off, (off_t)(end - off)) < 0)
				res = -errno;
		}
		mode &= FALLOC_FL_KEEP_SIZE;
	}
	if (res == 0 && fallocate(fd, mode, (off_t)off, (off_t)len) < 0)
		res = -errno;
	return (int)changed(d, fd, res);
}

int ufile_fill_from_lower(struct upper_data *d, int lower_fd)
{
	int fd = file_open(d, O_WRONLY);
	if (fd < 0)
		return fd;
	int res = 0;
	for (uint64_t pos = 0; res == 0 && pos < d->cow.lower_end;) {
		bool lower;
		uint64_t stop = cow_span(&d->cow, pos, &lower);
		if (stop > d->cow.lower_end)
			stop = d->cow.lower_end;
		if (lower)
			res = copy_data(lower_fd, fd, pos, stop);
		pos = stop;
	}
	return (int)changed(d, fd, res);
}

ssize_t ufile_copy_range(struct upper_data *dst, uint64_t dst_off, const struct upper_data *src,
			 uint64_t src_off, size_t len)
{
	int in = file_open(src, O_RDONLY);
	if (in < 0)
		return in;
	int out = file_open(dst, O_WRONLY);
	if (out < 0) {
		close(in);
		return out;
	}
	loff_t a = (loff_t)src_off, b = (loff_t)dst_off;
	ssize_t res = copy_file_range(in, &a, out, &b, len, 0);
	if (res < 0)
		res = -errno;
	close(in);
	return changed(dst, out, res);
}

int64_t ufile_seek(const struct upper_data *d, int64_t off, int whence)
{
	int fd = file_open(d, O_RDONLY);
	if (fd < 0)
		return fd;
	int64_t r = lseek(fd, off, whence);
	if (r < 0)
		r = -errno;
	close(fd);
	return r;
}

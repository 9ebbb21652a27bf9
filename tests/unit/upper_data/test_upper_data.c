/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fs/upper_data.c (TAP): one file's upper data over a lower
 * file (a memfd with random bytes), driven by random writes, truncates,
 * fallocates, finishes and copies, and read back after each step against a
 * plain byte array model of the file. Twice: in the filestore, and (as
 * root, where a private tmpfs can be made) in files of their own, as with
 * passthrough=upper (upper_data_file.c). */
#include "upper_data.h"

#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAXLEN (64 * 1024)

/* NULL: the filestore; else the data starts in files of their own there. */
static struct upper_files *files;

static void init(struct upper_data *d)
{
	upper_data_init(d);
	if (files)
		upper_data_use_files(d, files);
}

struct model {
	unsigned char b[MAXLEN];
	uint64_t size;
};

static uint64_t rnd_state = 88172645463325252ULL;
static uint64_t rnd(uint64_t n)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return n ? rnd_state % n : 0;
}

/* Reads [0, size) of d the way a READ reply would carry it. */
static int read_all(struct filestore *s, const struct upper_data *d, int lower_fd,
		    unsigned char *out, uint64_t size)
{
	struct fuse_bufvec *bv;
	int res = upper_data_read(s, d, lower_fd, 0, (size_t)size, &bv);
	if (res < 0)
		return res;
	uint64_t pos = 0;
	for (size_t k = 0; k < bv->count; k++) {
		const struct fuse_buf *b = &bv->buf[k];
		if (b->flags & FUSE_BUF_IS_FD) {
			if (pread(b->fd, out + pos, b->size, b->pos) != (ssize_t)b->size) {
				free(bv);
				return -EIO;
			}
		} else {
			memcpy(out + pos, b->mem, b->size);
		}
		pos += b->size;
	}
	free(bv);
	return pos == size ? 0 : -EIO;
}

static bool same(struct filestore *s, const struct upper_data *d, int lower_fd,
		 const struct model *m)
{
	static unsigned char got[MAXLEN];
	if (upper_data_size(d) != m->size)
		return false;
	return read_all(s, d, lower_fd, got, m->size) == 0 && memcmp(got, m->b, m->size) == 0;
}

static ssize_t write_mem(struct filestore *s, struct upper_data *d, const void *p, size_t len,
			 uint64_t off, int lower_fd)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(len);
	bv.buf[0].mem = (void *)p;
	return upper_data_write(s, d, &bv, off, lower_fd);
}

static int make_lower(const unsigned char *bytes, size_t len)
{
	int fd = memfd_create("lower", MFD_CLOEXEC);
	if (fd >= 0 && write(fd, bytes, len) != (ssize_t)len) {
		close(fd);
		return -1;
	}
	return fd;
}

static void fixed_cases(struct filestore *s)
{
	unsigned char lower[100];
	for (size_t i = 0; i < sizeof(lower); i++)
		lower[i] = (unsigned char)(i + 1);
	int fd = make_lower(lower, sizeof(lower));
	struct upper_data d;
	init(&d);
	ok(!upper_data_is_up(&d) && upper_data_reads_lower(&d), "a fresh file is not up");
	is_int(write_mem(s, &d, "x", 1, 0, fd), -EBADF, "writing data that is not up: EBADF");
	is_int(upper_data_truncate(s, &d, 5), -EBADF, "growing data that is not up: EBADF");

	is_int(upper_data_start_lazy(s, &d, sizeof(lower)), 0, "lazy copy-up");
	ok(upper_data_is_up(&d) && upper_data_reads_lower(&d), "lazily up: still reads lower");
	is_int(upper_data_blocks(&d), 8, "100 lower bytes count as one 4k block");
	is_int(write_mem(s, &d, "AB", 2, 10, fd), 2, "a write into a lazy file");
	struct model m = { .size = sizeof(lower) };
	memcpy(m.b, lower, sizeof(lower));
	m.b[10] = 'A';
	m.b[11] = 'B';
	ok(same(s, &d, fd, &m), "lower bytes around the write are read from the lower file");

	is_int(upper_data_finish(s, &d, -1), -EBADF, "finishing without the lower file: EBADF");
	ok(same(s, &d, fd, &m), "... and nothing changed");
	is_int(upper_data_finish(s, &d, fd), 0, "finish the copy-up");
	ok(!upper_data_reads_lower(&d), "wholly up: reads only the store");
	ok(same(s, &d, -1, &m), "the store alone holds the same bytes");

	struct upper_data e;
	init(&e);
	is_int(upper_data_start_lazy(s, &e, sizeof(lower)), 0, "a second lazy file");
	is_int(upper_data_copy_range(s, &d, 0, &e, 0, 10), -EOPNOTSUPP,
	       "copy_file_range from a lazy file: EOPNOTSUPP (the kernel copies)");
	is_int(upper_data_copy_range(s, &e, 0, &d, 5, 10), 10, "copy_file_range into a lazy file");
	is_int(upper_data_truncate(s, &e, 0), 0, "truncate to 0");
	ok(upper_data_is_up(&e) && !upper_data_reads_lower(&e) && upper_data_size(&e) == 0,
	   "truncated to 0: up, empty, no lower");
	upper_data_release(s, &e);

	upper_data_release(s, &d);
	init(&d);
	upper_data_start_empty(s, &d);
	ok(upper_data_is_up(&d) && upper_data_size(&d) == 0 && upper_data_blocks(&d) == 0,
	   "a new file: up and empty");
	is_int(upper_data_start_copy(s, &d, fd, sizeof(lower)), 0,
	       "copying up data that is already up does nothing");
	is_int(upper_data_size(&d), 0, "... size stays 0");
	upper_data_release(s, &d);

	init(&d);
	is_int(upper_data_start_copy(s, &d, fd, sizeof(lower)), 0, "whole copy-up");
	memcpy(m.b, lower, sizeof(lower));
	ok(same(s, &d, -1, &m), "a whole copy needs no lower file");
	upper_data_release(s, &d);
	close(fd);
}

/* Random steps on one lazily copied-up file; each compared with the model. */
static void random_steps(struct filestore *s, int rounds, int steps)
{
	static unsigned char lower[MAXLEN / 2], buf[MAXLEN];
	bool all_ok = true;
	for (int r = 0; r < rounds && all_ok; r++) {
		size_t lsize = (size_t)rnd(sizeof(lower));
		for (size_t i = 0; i < lsize; i++)
			lower[i] = (unsigned char)rnd(256);
		int fd = make_lower(lower, lsize);
		struct model m = { .size = lsize };
		memcpy(m.b, lower, lsize);
		struct upper_data d;
		init(&d);
		all_ok = upper_data_start_lazy(s, &d, lsize) == 0;
		for (int k = 0; k < steps && all_ok; k++) {
			uint64_t off = rnd(MAXLEN - 1), len = 1 + rnd(MAXLEN / 8);
			if (off + len > MAXLEN)
				len = MAXLEN - off;
			const char *what;
			switch (rnd(6)) {
			case 0:
			case 1:
				what = "write";
				for (uint64_t i = 0; i < len; i++)
					buf[i] = (unsigned char)rnd(256);
				all_ok = write_mem(s, &d, buf, (size_t)len, off, fd) == (ssize_t)len;
				if (off > m.size)
					memset(m.b + m.size, 0, (size_t)(off - m.size));
				memcpy(m.b + off, buf, (size_t)len);
				if (off + len > m.size)
					m.size = off + len;
				break;
			case 2:
				what = "truncate";
				off = rnd(MAXLEN);
				all_ok = upper_data_truncate(s, &d, off) == 0;
				if (off > m.size)
					memset(m.b + m.size, 0, (size_t)(off - m.size));
				m.size = off;
				break;
			case 3:
				what = "punch hole";
				all_ok = upper_data_fallocate(s, &d,
							      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
							      off, len) == 0;
				if (off < m.size)
					memset(m.b + off, 0,
					       (size_t)((off + len > m.size ? m.size : off + len) - off));
				break;
			case 4:
				what = "zero range";
				all_ok = upper_data_fallocate(s, &d, FALLOC_FL_ZERO_RANGE, off, len) == 0;
				if (off > m.size)
					memset(m.b + m.size, 0, (size_t)(off - m.size));
				memset(m.b + off, 0, (size_t)len);
				if (off + len > m.size)
					m.size = off + len;
				break;
			default:
				what = "finish";
				all_ok = upper_data_finish(s, &d, fd) == 0 && !upper_data_reads_lower(&d);
				break;
			}
			if (all_ok)
				all_ok = same(s, &d, fd, &m);
			if (!all_ok)
				diag("round %d step %d: %s at %llu+%llu differs", r, k, what,
				     (unsigned long long)off, (unsigned long long)len);
		}
		upper_data_release(s, &d);
		close(fd);
	}
	ok(all_ok, "%d rounds of %d random steps read back as the model", rounds, steps);
	ok(filestore_used(s) == 0, "every block went back to the store");
}

int main(void)
{
	struct filestore *s;
	char err[256];
	if (filestore_create(&s, NULL, 0, err, sizeof(err)) < 0) {
		printf("Bail out! filestore: %s\n", err);
		return 1;
	}
	fixed_cases(s);
	random_steps(s, 60, 80);
	if (upper_files_create(&files, 0, err, sizeof(err)) == 0) {
		fixed_cases(s);
		random_steps(s, 60, 80);
		ok(upper_files_used(files) == 0, "files of their own: every block went back");
		upper_files_destroy(files);
	} else {
		printf("# files of their own not tested: %s\n", err);
	}
	char why[256];
	ok(filestore_check(s, why, sizeof(why)) == 0, "the store's invariants hold");
	filestore_destroy(s);
	return tap_done();
}

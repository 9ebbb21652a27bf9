/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fstore/filestore.c (TAP). Real syscalls on a real memfd. */
#include "filestore.h"
#include "tap.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define B 4096u

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static uint64_t rng_state = 0x1234567887654321ull;
static uint64_t rnd64(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}
static uint64_t rnd(uint64_t n) { return n ? rnd64() % n : 0; }

static void fill_pattern(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)((i * 131 + seed * 7 + (i >> 8)) % 251 + 1);
}

static struct filestore *mkstore(uint64_t limit)
{
	struct filestore *fstore = NULL;
	char err[256] = "";
	int rc = filestore_create(&fstore, NULL, limit, err, sizeof(err));
	if (rc < 0) {
		diag("filestore_create: %s", err);
		exit(1);
	}
	return fstore;
}

/* Read [off, off+len) through fdata_read + fuse_buf_copy into out. */
static ssize_t read_back(struct filestore *fstore, const struct fdata *d, uint64_t off, size_t len,
			 void *out)
{
	struct fuse_bufvec *v;
	int rc = fdata_read(fstore, d, off, len, &v);
	if (rc < 0)
		return rc;
	size_t sz = fuse_buf_size(v);
	ssize_t r = 0;
	if (sz) {
		struct fuse_bufvec dst = FUSE_BUFVEC_INIT(sz);
		dst.buf[0].mem = out;
		r = fuse_buf_copy(&dst, v, 0);
	}
	free(v);
	return r;
}

/* Compare the whole file with the model; returns offset of first difference or -1. */
static int64_t compare(struct filestore *fstore, const struct fdata *d, const unsigned char *model,
		       size_t msize)
{
	if (d->size != msize)
		return -2;
	unsigned char *buf = malloc(msize + 1);
	ssize_t r = read_back(fstore, d, 0, msize + 100, buf);
	int64_t res = -1;
	if (r != (ssize_t)msize) {
		res = -3;
	} else {
		for (size_t i = 0; i < msize; i++)
			if (buf[i] != model[i]) {
				res = (int64_t)i;
				break;
			}
	}
	free(buf);
	return res;
}

static bool all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* --- global invariants: extents of all files + free ranges tile [0,hwm) --- */

struct span {
	uint64_t s, len;
	int owner;
};
struct spans {
	struct span *v;
	size_t n, cap;
};
static void spans_add(struct spans *sp, uint64_t s, uint64_t len, int owner)
{
	if (sp->n == sp->cap) {
		sp->cap = sp->cap ? sp->cap * 2 : 64;
		sp->v = realloc(sp->v, sp->cap * sizeof(*sp->v));
	}
	sp->v[sp->n++] = (struct span){ s, len, owner };
}
static void free_cb(uint64_t s, uint64_t len, void *arg) { spans_add(arg, s, len, -1); }
static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->s < y->s ? -1 : x->s > y->s;
}

static const char *check_all(struct filestore *fstore, struct fdata *files, size_t nfiles)
{
	static char err[256];
	if (filestore_check(fstore, err, sizeof(err)) < 0)
		return err;
	struct spans sp = { 0 };
	uint64_t used = 0;
	for (size_t f = 0; f < nfiles; f++) {
		const struct fdata *d = &files[f];
		for (size_t i = 0; i < d->n; i++) {
			const struct fextent *e = &d->ext[i];
			if (e->len == 0 || e->off % B || e->store % B || e->len % B) {
				free(sp.v);
				return "unaligned or empty extent";
			}
			if (i > 0) {
				const struct fextent *p = &d->ext[i - 1];
				if (p->off + p->len > e->off) {
					free(sp.v);
					return "extents overlap or unsorted";
				}
				if (p->off + p->len == e->off && p->store + p->len == e->store) {
					free(sp.v);
					return "adjacent contiguous extents not merged";
				}
			}
			used += e->len;
			spans_add(&sp, e->store, e->len, (int)f);
		}
	}
	if (used != filestore_used(fstore)) {
		free(sp.v);
		return "sum of extents != filestore_used";
	}
	filestore_foreach_free(fstore, free_cb, &sp);
	if (sp.n)
		qsort(sp.v, sp.n, sizeof(*sp.v), span_cmp);
	uint64_t pos = 0;
	for (size_t i = 0; i < sp.n; i++) {
		if (sp.v[i].s != pos) {
			free(sp.v);
			return "store ranges overlap or have a gap";
		}
		pos += sp.v[i].len;
	}
	free(sp.v);
	if (pos != filestore_hwm(fstore))
		return "store ranges do not end at the high-water mark";
	return NULL;
}

/* ------------------------------------------------------------------------ */

static void test_create(void)
{
	struct filestore *fstore = NULL;
	char err[256] = "";
	int rc = filestore_create(&fstore, NULL, 0, err, sizeof(err));
	ok(rc == 0 && fstore && filestore_fd(fstore) >= 0, "memfd store created");
	ok(filestore_used(fstore) == 0 && filestore_limit(fstore) == 0 && filestore_hwm(fstore) == 0,
	   "fresh store is empty and unlimited");
	int fl = fcntl(filestore_fd(fstore), F_GETFD);
	ok(fl >= 0 && (fl & FD_CLOEXEC), "store fd is close-on-exec");
	filestore_destroy(fstore);

	fstore = NULL;
	err[0] = 0;
	rc = filestore_create(&fstore, "/nonexistent/memoverlay-test-dir", 0, err, sizeof(err));
	ok(rc == -ENOENT && !fstore && strstr(err, "/nonexistent/memoverlay-test-dir") &&
		   !strchr(err, '\n'),
	   "missing dir: -ENOENT with a one-line message (%s)", err);
}

static void test_roundtrip(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata d;
	fdata_init(&d);
	size_t msize = 0, cap = 1 << 20;
	unsigned char *model = calloc(cap, 1);
	unsigned char *src = malloc(cap);
	static const size_t offs[] = { 1, 4095, 4097, 8191, 12288, 30000, 65535, 100001 };
	static const size_t lens[] = { 1, 4095, 4096, 4097, 10000, 3, 70000, 8193 };
	bool good = true;
	for (size_t k = 0; k < sizeof(offs) / sizeof(offs[0]); k++) {
		fill_pattern(src, lens[k], (unsigned)k + 1);
		ssize_t w = fdata_write(fstore, &d, src, lens[k], offs[k]);
		if (w != (ssize_t)lens[k]) {
			good = false;
			diag("write %zu@%zu returned %zd", lens[k], offs[k], w);
		}
		memcpy(model + offs[k], src, lens[k]);
		if (offs[k] + lens[k] > msize)
			msize = offs[k] + lens[k];
	}
	ok(good, "writes at odd offsets and sizes return len");
	int64_t diff = compare(fstore, &d, model, msize);
	ok(diff == -1, "whole file reads back (first diff %lld)", (long long)diff);

	unsigned char *buf = malloc(cap);
	good = true;
	for (int k = 0; k < 200 && good; k++) {
		uint64_t off = rnd(msize + 100);
		size_t len = rnd(20000);
		ssize_t r = read_back(fstore, &d, off, len, buf);
		size_t expect = off >= msize ? 0 : (len < msize - off ? len : msize - off);
		if (r != (ssize_t)expect || memcmp(buf, model + off, expect))
			good = false;
	}
	ok(good, "random sub-range reads match and clip at EOF");
	ok(d.n <= 3, "sequential-ish writes produce few extents (%zu)", d.n);
	ok(fdata_blocks(&d) * 512 == filestore_used(fstore), "fdata_blocks matches used");
	ok(check_all(fstore, &d, 1) == NULL, "invariants hold");

	struct fuse_bufvec *v = NULL;
	ok(fdata_read(fstore, &d, msize + 5, 100, &v) == 0 && v && fuse_buf_size(v) == 0,
	   "read past EOF gives an empty bufvec");
	free(v);
	ok(fdata_write(fstore, &d, src, 0, 5) == 0 && d.size == msize, "zero-length write is a no-op");
	ok(fdata_write(fstore, &d, src, 10, FILESTORE_MAX_SIZE - 5) == -EFBIG, "write past max -EFBIG");

	fdata_release(fstore, &d);
	ok(d.n == 0 && d.size == 0 && filestore_used(fstore) == 0 && filestore_hwm(fstore) == 0,
	   "release frees everything and the high-water mark drops to 0");
	free(model);
	free(src);
	free(buf);
	filestore_destroy(fstore);
}

static void test_sparse(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata d;
	fdata_init(&d);
	const char msg[] = "hello sparse";
	ok(fdata_write(fstore, &d, msg, 12, (1 << 20) + 3) == 12, "write at 1 MiB + 3");
	ok(d.size == (1 << 20) + 15, "size extended");
	ok(fdata_blocks(&d) == 8 && filestore_used(fstore) == B, "only one block allocated");
	size_t n = d.size;
	unsigned char *buf = malloc(n);
	memset(buf, 0xee, n);
	ok(read_back(fstore, &d, 0, n, buf) == (ssize_t)n && all_zero(buf, (1 << 20) + 3) &&
		   memcmp(buf + (1 << 20) + 3, msg, 12) == 0,
	   "hole reads as zeros, data intact");
	struct fuse_bufvec *v;
	ok(fdata_read(fstore, &d, 0, n, &v) == 0, "fdata_read");
	bool shape = v->count >= 2 && !(v->buf[0].flags & FUSE_BUF_IS_FD);
	struct fuse_buf *bb = v->buf;
	const struct fuse_buf *last = &bb[v->count - 1];
	shape = shape && (last->flags & FUSE_BUF_IS_FD) && (last->flags & FUSE_BUF_FD_SEEK) &&
		last->fd == filestore_fd(fstore) && last->size == (1 << 20) + 15 - (1 << 20);
	ok(shape, "hole = memory segments, data = FD_SEEK segment on the store fd");
	free(v);
	free(buf);
	fdata_release(fstore, &d);
	filestore_destroy(fstore);
}

static void test_truncate(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata d;
	fdata_init(&d);
	unsigned char src[10000];
	memset(src, 0xaa, sizeof(src));
	fdata_write(fstore, &d, src, sizeof(src), 0);
	ok(filestore_used(fstore) == 3 * B, "3 blocks for 10000 bytes");
	ok(fdata_truncate(fstore, &d, 5000) == 0 && d.size == 5000, "shrink to 5000");
	ok(filestore_used(fstore) == 2 * B, "block past the new size freed");
	ok(fdata_truncate(fstore, &d, 20000) == 0 && d.size == 20000, "grow to 20000");
	ok(filestore_used(fstore) == 2 * B, "grow allocates nothing");
	unsigned char buf[20000];
	ok(read_back(fstore, &d, 0, 20000, buf) == 20000, "read grown file");
	bool good = true;
	for (int i = 0; i < 5000; i++)
		good = good && buf[i] == 0xaa;
	ok(good && all_zero(buf + 5000, 15000), "tail of the partial block was zeroed");
	ok(fdata_seek(&d, 8192, SEEK_DATA) == -ENXIO, "no data after 8192");
	ok(fdata_truncate(fstore, &d, 0) == 0 && filestore_used(fstore) == 0 && d.n == 0,
	   "truncate to 0 frees all");
	ok(fdata_truncate(fstore, &d, FILESTORE_MAX_SIZE + 1) == -EFBIG, "truncate past max -EFBIG");
	ok(check_all(fstore, &d, 1) == NULL, "invariants hold");
	fdata_release(fstore, &d);
	filestore_destroy(fstore);
}

static blkcnt_t store_blocks(struct filestore *fstore)
{
	struct stat st;
	if (fstat(filestore_fd(fstore), &st) < 0)
		return -1;
	return st.st_blocks;
}

static void test_punch(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata d;
	fdata_init(&d);
	size_t n = 1 << 20;
	unsigned char *src = malloc(n), *buf = malloc(n);
	fill_pattern(src, n, 3);
	ok(fdata_write(fstore, &d, src, n, 0) == (ssize_t)n, "write 1 MiB");
	blkcnt_t before = store_blocks(fstore);
	uint64_t off = 10 * B + 100, len = 20 * B;
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) == 0,
	   "punch hole");
	ok(filestore_used(fstore) == n - 19 * B, "19 whole blocks freed (used %llu)",
	   (unsigned long long)filestore_used(fstore));
	blkcnt_t after = store_blocks(fstore);
	ok(after <= before - 19 * 8, "store st_blocks dropped (%lld -> %lld)", (long long)before,
	   (long long)after);
	ok(d.size == n, "size unchanged");
	memset(src + off, 0, len);
	ok(read_back(fstore, &d, 0, n, buf) == (ssize_t)n && memcmp(buf, src, n) == 0,
	   "punched range reads zero, rest intact");
	ok(fdata_seek(&d, 0, SEEK_HOLE) == 11 * B && fdata_seek(&d, 11 * B, SEEK_DATA) == 30 * B,
	   "seek sees the hole at block granularity");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_PUNCH_HOLE, 0, B) == -EOPNOTSUPP,
	   "punch without KEEP_SIZE is -EOPNOTSUPP");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_COLLAPSE_RANGE, 0, B) == -EOPNOTSUPP,
	   "collapse range is -EOPNOTSUPP");
	ok(fdata_fallocate(fstore, &d, 0, 0, 0) == -EINVAL, "len 0 is -EINVAL");
	/* punch inside a single block only zeroes */
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 200) == 0 &&
		   filestore_used(fstore) == n - 19 * B,
	   "sub-block punch frees nothing");
	memset(src + 100, 0, 200);
	ok(read_back(fstore, &d, 0, n, buf) == (ssize_t)n && memcmp(buf, src, n) == 0,
	   "sub-block punch zeroes");
	/* punch the whole file */
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, n) == 0 &&
		   filestore_used(fstore) == 0 && d.n == 0 && d.size == n,
	   "punching everything frees everything, size kept");
	ok(store_blocks(fstore) == 0, "store holds no memory");
	ok(check_all(fstore, &d, 1) == NULL, "invariants hold");
	fdata_release(fstore, &d);
	free(src);
	free(buf);
	filestore_destroy(fstore);
}

static void test_zero_range_and_falloc(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata d;
	fdata_init(&d);
	size_t n = 5 * B + 123;
	unsigned char src[8 * B], buf[16 * B];
	fill_pattern(src, n, 9);
	fdata_write(fstore, &d, src, 2 * B, 0);
	fdata_write(fstore, &d, src + 3 * B, n - 3 * B, 3 * B); /* hole at block 2 */
	ok(filestore_used(fstore) == 5 * B, "5 blocks mapped (one hole)");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_ZERO_RANGE, 1000, 3 * B) == 0, "ZERO_RANGE");
	memset(src + 2 * B, 0, B);
	memset(src + 1000, 0, 3 * B);
	ok(read_back(fstore, &d, 0, n, buf) == (ssize_t)n && memcmp(buf, src, n) == 0,
	   "zeroed range reads zero, rest intact");
	ok(filestore_used(fstore) == 6 * B, "ZERO_RANGE allocated the hole block");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, n - 10, B) == 0 &&
		   d.size == n,
	   "ZERO_RANGE|KEEP_SIZE past EOF keeps size");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_ZERO_RANGE, n - 10, 2 * B) == 0 &&
		   d.size == n - 10 + 2 * B,
	   "ZERO_RANGE past EOF extends size");
	memset(src + n - 10, 0, 2 * B);
	ok(read_back(fstore, &d, 0, d.size, buf) == (ssize_t)d.size && memcmp(buf, src, d.size) == 0,
	   "content after extending ZERO_RANGE");

	struct fdata e;
	fdata_init(&e);
	ok(fdata_fallocate(fstore, &e, 0, 0, 10000) == 0 && e.size == 10000 &&
		   fdata_blocks(&e) == 3 * 8,
	   "fallocate mode 0 allocates and extends");
	ok(read_back(fstore, &e, 0, 10000, buf) == 10000 && all_zero(buf, 10000),
	   "fallocated space reads zero");
	ok(fdata_fallocate(fstore, &e, FALLOC_FL_KEEP_SIZE, 20000, 10000) == 0 && e.size == 10000 &&
		   fdata_blocks(&e) == 3 * 8 + 4 * 8,
	   "KEEP_SIZE allocates past EOF without changing size");
	ok(fdata_seek(&e, 0, SEEK_HOLE) == 10000, "SEEK_HOLE stops at EOF");
	ok(fdata_truncate(fstore, &e, 40000) == 0 && read_back(fstore, &e, 0, 40000, buf) == 40000 &&
		   all_zero(buf, 40000),
	   "growing over preallocated blocks exposes zeros");
	ok(fdata_seek(&e, 12288, SEEK_DATA) == 16384, "SEEK_DATA finds preallocated blocks");
	ok(fdata_truncate(fstore, &e, 5000) == 0 && fdata_blocks(&e) == 2 * 8,
	   "shrinking frees preallocated blocks past EOF too");
	struct fdata all[2] = { d, e };
	ok(check_all(fstore, all, 2) == NULL, "invariants hold");
	fdata_release(fstore, &d);
	fdata_release(fstore, &e);
	filestore_destroy(fstore);
}

static void test_seek(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata d;
	fdata_init(&d);
	ok(fdata_seek(&d, 0, SEEK_DATA) == -ENXIO && fdata_seek(&d, 0, SEEK_HOLE) == -ENXIO,
	   "empty file: both -ENXIO");
	unsigned char src[B];
	memset(src, 1, B);
	fdata_write(fstore, &d, src, B, 0);
	fdata_write(fstore, &d, src, 712, 3 * B);
	fdata_truncate(fstore, &d, 20000);
	ok(fdata_seek(&d, 0, SEEK_DATA) == 0, "DATA(0)=0");
	ok(fdata_seek(&d, 0, SEEK_HOLE) == (int64_t)B, "HOLE(0)=4096");
	ok(fdata_seek(&d, 5000, SEEK_DATA) == 3 * B, "DATA(5000)=12288");
	ok(fdata_seek(&d, 5000, SEEK_HOLE) == 5000, "HOLE(5000)=5000");
	ok(fdata_seek(&d, 3 * B + 5, SEEK_HOLE) == 4 * B, "HOLE in data = block end");
	ok(fdata_seek(&d, 4 * B, SEEK_DATA) == -ENXIO, "DATA past last data -ENXIO");
	ok(fdata_seek(&d, 19999, SEEK_HOLE) == 19999, "HOLE(size-1)");
	ok(fdata_seek(&d, 20000, SEEK_HOLE) == -ENXIO && fdata_seek(&d, 20000, SEEK_DATA) == -ENXIO,
	   "at EOF: -ENXIO");
	ok(fdata_seek(&d, -1, SEEK_DATA) == -ENXIO, "negative offset -ENXIO");
	ok(fdata_seek(&d, 0, SEEK_SET) == -EINVAL, "other whence -EINVAL");
	fdata_truncate(fstore, &d, 3 * B + 100);
	ok(fdata_seek(&d, 3 * B, SEEK_HOLE) == 3 * B + 100, "HOLE clipped to size");
	fdata_release(fstore, &d);
	filestore_destroy(fstore);
}

static void test_enospc(void)
{
	struct filestore *fstore = mkstore(16 * B);
	ok(filestore_limit(fstore) == 16 * B, "limit reported");
	struct fdata d, e;
	fdata_init(&d);
	fdata_init(&e);
	unsigned char src[64 * B], model[64 * B];
	fill_pattern(src, sizeof(src), 5);
	ok(fdata_write(fstore, &d, src, 10 * B, 0) == 10 * B, "10 blocks fit");
	memcpy(model, src, 10 * B);
	size_t nbefore = d.n;
	ok(fdata_write(fstore, &d, src, 8 * B, 1 << 20) == -ENOSPC, "write needing 8 more blocks: ENOSPC");
	ok(d.size == 10 * B && d.n == nbefore && filestore_used(fstore) == 10 * B,
	   "nothing changed (size, extents, used)");
	ok(fdata_write(fstore, &d, src + 100, 12 * B, 5 * B) == -ENOSPC &&
		   compare(fstore, &d, model, 10 * B) == -1 && filestore_used(fstore) == 10 * B,
	   "overlapping write needing 7 more blocks: ENOSPC, old data intact");
	ok(fdata_write(fstore, &d, src, 6 * B, 10 * B) == 6 * B && filestore_used(fstore) == 16 * B,
	   "filling to the limit exactly works");
	memcpy(model + 10 * B, src, 6 * B);
	ok(fdata_write(fstore, &d, src, 1, 16 * B) == -ENOSPC, "one more byte in a new block: ENOSPC");
	ok(fdata_write(fstore, &d, src + 7, 3 * B, 5) == 3 * B, "overwrite at the limit works");
	memcpy(model + 5, src + 7, 3 * B);
	ok(fdata_fallocate(fstore, &e, 0, 0, B) == -ENOSPC && e.n == 0 && e.size == 0,
	   "fallocate: ENOSPC, nothing changed");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * B, 2 * B) == 0 &&
		   filestore_used(fstore) == 14 * B,
	   "punch frees 2 blocks");
	memset(model + 2 * B, 0, 2 * B);
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_ZERO_RANGE, 100, 20 * B) == -ENOSPC,
	   "ZERO_RANGE needing too many blocks: ENOSPC");
	ok(compare(fstore, &d, model, 16 * B) == -1, "data not zeroed by the failed ZERO_RANGE");
	ok(fdata_copy_range(fstore, &e, 0, &d, 0, 4 * B) == -ENOSPC && e.n == 0 && e.size == 0,
	   "copy_range: ENOSPC, nothing changed");
	ok(fdata_copy_range(fstore, &e, 0, &d, 0, 2 * B) == 2 * B && filestore_used(fstore) == 16 * B,
	   "copy_range that fits");
	ok(compare(fstore, &e, model, 2 * B) == -1, "copied data");

	/* copy_from_fd ENOSPC */
	int mfd = memfd_create("src", MFD_CLOEXEC);
	ok(mfd >= 0 && write(mfd, src, 3 * B) == 3 * B, "source memfd");
	struct fdata oldd = e;
	ok(fdata_copy_from_fd(fstore, &e, mfd, 3 * B) == -ENOSPC, "copy_from_fd over limit: ENOSPC");
	ok(e.ext == oldd.ext && e.n == oldd.n && e.size == oldd.size && compare(fstore, &e, model, 2 * B) == -1 &&
		   filestore_used(fstore) == 16 * B,
	   "copy_from_fd changed nothing");
	close(mfd);
	ok(fdata_truncate(fstore, &d, 0) == 0 && filestore_used(fstore) == 2 * B, "truncate frees");
	ok(fdata_write(fstore, &d, src, 14 * B - 3, 3) == 14 * B - 3, "space is usable again");
	struct fdata all[2] = { d, e };
	ok(check_all(fstore, all, 2) == NULL, "invariants hold");
	fdata_release(fstore, &d);
	fdata_release(fstore, &e);
	filestore_destroy(fstore);

	fstore = mkstore(10000);
	fdata_init(&d);
	ok(fdata_write(fstore, &d, src, 2 * B, 0) == 2 * B && fdata_write(fstore, &d, src, 1, 2 * B) == -ENOSPC,
	   "unaligned limit rounds down to whole blocks");
	fdata_release(fstore, &d);
	filestore_destroy(fstore);
}

static void test_reuse(void)
{
	enum { N = 100000 };
	struct filestore *fstore = mkstore(0);
	struct fdata *f = malloc(N * sizeof(*f));
	unsigned char src[3 * B];
	fill_pattern(src, sizeof(src), 1);
	bool good = true;

	double t0 = now_ns();
	for (int i = 0; i < N; i++) {
		fdata_init(&f[i]);
		size_t len = 100 + (size_t)(i % 3) * B;
		if (fdata_write(fstore, &f[i], src, len, 0) != (ssize_t)len)
			good = false;
	}
	double t1 = now_ns();
	uint64_t hwm1 = filestore_hwm(fstore);
	ok(good && hwm1 == filestore_used(fstore), "100k files written, store dense (%llu MiB)",
	   (unsigned long long)(hwm1 >> 20));
	diag("allocate+write: %.0f ns/file", (t1 - t0) / N);

	/* fragment: free every other file */
	t0 = now_ns();
	for (int i = 0; i < N; i += 2)
		fdata_release(fstore, &f[i]);
	t1 = now_ns();
	diag("release (fragmenting): %.0f ns/file, %zu free ranges", (t1 - t0) / (N / 2),
	     filestore_free_ranges(fstore));
	ok(filestore_free_ranges(fstore) > N / 4, "store is fragmented");

	/* refill with same-sized files: must reuse holes, no growth */
	t0 = now_ns();
	for (int i = 0; i < N; i += 2) {
		size_t len = 100 + (size_t)(i % 3) * B;
		if (fdata_write(fstore, &f[i], src, len, 0) != (ssize_t)len)
			good = false;
	}
	t1 = now_ns();
	diag("allocate into fragmented store: %.0f ns/file", (t1 - t0) / (N / 2));
	ok(good && filestore_hwm(fstore) == hwm1, "refill reuses freed space (hwm %llu -> %llu)",
	   (unsigned long long)hwm1, (unsigned long long)filestore_hwm(fstore));
	const char *why = check_all(fstore, f, N);
	ok(why == NULL, "invariants hold with 100k files (%s)", why ? why : "ok");

	/* many rounds of churn with random sizes must stay bounded */
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < N; i++) {
			if (rnd(3) == 0) {
				fdata_release(fstore, &f[i]);
				size_t len = 1 + rnd(3 * B);
				if (fdata_write(fstore, &f[i], src, len, 0) != (ssize_t)len)
					good = false;
			}
		}
	}
	uint64_t hwm2 = filestore_hwm(fstore), used2 = filestore_used(fstore);
	ok(good && hwm2 <= used2 + used2 / 2,
	   "after churn the store stays bounded (hwm %llu MiB, used %llu MiB)",
	   (unsigned long long)(hwm2 >> 20), (unsigned long long)(used2 >> 20));
	good = true;
	for (int i = 0; i < N && good; i += 997) {
		unsigned char buf[3 * B];
		size_t sz = f[i].size;
		good = read_back(fstore, &f[i], 0, sz, buf) == (ssize_t)sz && memcmp(buf, src, sz) == 0;
	}
	ok(good, "sampled files read back after churn");

	t0 = now_ns();
	for (int i = 0; i < N; i++)
		fdata_release(fstore, &f[i]);
	t1 = now_ns();
	diag("release all: %.0f ns/file", (t1 - t0) / N);
	struct stat st;
	fstat(filestore_fd(fstore), &st);
	ok(filestore_used(fstore) == 0 && filestore_hwm(fstore) == 0 && filestore_free_ranges(fstore) == 0,
	   "all free: used 0, hwm 0, no free ranges");
	ok(st.st_size <= 8 << 20 && st.st_blocks == 0, "store file shrank (size %lld, blocks %lld)",
	   (long long)st.st_size, (long long)st.st_blocks);
	free(f);
	filestore_destroy(fstore);
}

static const char *tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	return t && *t ? t : "/tmp";
}

static void test_copy_from_fd(void)
{
	struct filestore *fstore = mkstore(0);
	char path[4096];
	snprintf(path, sizeof(path), "%s/filestore-test-XXXXXX", tmpdir());
	int sfd = mkstemp(path);
	ok(sfd >= 0, "temp source file");
	unlink(path);
	size_t total = 3 << 20;
	unsigned char *data = malloc(5000), *want = calloc(total, 1), *buf = malloc(total + B);
	fill_pattern(data, 5000, 11);
	pwrite(sfd, data, 5000, 0);
	pwrite(sfd, data, 100, (1 << 20) + 7);
	ftruncate(sfd, (off_t)total);
	memcpy(want, data, 5000);
	memcpy(want + (1 << 20) + 7, data, 100);
	bool src_sparse = lseek(sfd, 0, SEEK_HOLE) < (off_t)total;

	struct fdata d;
	fdata_init(&d);
	ok(fdata_copy_from_fd(fstore, &d, sfd, total) == 0 && d.size == total, "copy-up 3 MiB");
	ok(compare(fstore, &d, want, total) == -1, "content matches the source");
	if (src_sparse)
		ok(filestore_used(fstore) <= 64 * 1024, "holes stayed sparse (used %llu)",
		   (unsigned long long)filestore_used(fstore));
	else
		ok(1, "# SKIP source fstore has no SEEK_HOLE");

	ok(fdata_copy_from_fd(fstore, &d, sfd, 3000) == 0 && d.size == 3000 &&
		   compare(fstore, &d, want, 3000) == -1,
	   "copy-up of a prefix replaces the content");
	ok(filestore_used(fstore) == B, "old blocks freed (used %llu)",
	   (unsigned long long)filestore_used(fstore));
	ok(fdata_copy_from_fd(fstore, &d, sfd, total + 5000) == 0 && d.size == total + 5000 &&
		   read_back(fstore, &d, total - 10, 5010, buf) == 5010 && all_zero(buf, 5010),
	   "len past the source's EOF reads zeros");

	/* a non-sparse source (memfd written densely) through copy_file_range */
	int mfd = memfd_create("src", MFD_CLOEXEC);
	unsigned char *dense = malloc(300000);
	fill_pattern(dense, 300000, 4);
	write(mfd, dense, 300000);
	ok(fdata_copy_from_fd(fstore, &d, mfd, 300000) == 0 && compare(fstore, &d, dense, 300000) == -1,
	   "dense copy-up from a memfd");
	close(mfd);

	int p[2];
	pipe(p);
	struct fdata old = d;
	ok(fdata_copy_from_fd(fstore, &d, p[0], 100) < 0 && d.ext == old.ext && d.size == old.size,
	   "unreadable source: error, d unchanged");
	close(p[0]);
	close(p[1]);
	ok(fdata_copy_from_fd(fstore, &d, sfd, 0) == 0 && d.size == 0 && filestore_used(fstore) == 0,
	   "copy-up of an empty range");
	ok(check_all(fstore, &d, 1) == NULL, "invariants hold");
	fdata_release(fstore, &d);
	close(sfd);
	free(data);
	free(want);
	free(buf);
	free(dense);
	filestore_destroy(fstore);
}

static void test_copy_range(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata s, t;
	fdata_init(&s);
	fdata_init(&t);
	size_t n = 40000;
	unsigned char *ms = calloc(n, 1), *mt = calloc(2 * n, 1), *src = malloc(n);
	fill_pattern(src, n, 2);
	fdata_write(fstore, &s, src, 10000, 0);
	memcpy(ms, src, 10000);
	fdata_write(fstore, &s, src + 20000, 20000, 20000); /* hole [10000,20000) */
	memcpy(ms + 20000, src + 20000, 20000);
	unsigned char junk[30000];
	memset(junk, 0x55, sizeof(junk));
	fdata_write(fstore, &t, junk, sizeof(junk), 0);
	memcpy(mt, junk, sizeof(junk));

	ok(fdata_copy_range(fstore, &t, 1000, &s, 500, 25000) == 25000, "copy 25000 bytes");
	memcpy(mt + 1000, ms + 500, 25000);
	ok(compare(fstore, &t, mt, 30000) == -1, "dst content (holes copied as zeros)");
	ok(compare(fstore, &s, ms, n) == -1, "src untouched");
	ok(fdata_copy_range(fstore, &t, 50000, &s, 30000, 99999) == 10000 && t.size == 60000,
	   "clipped at src size, dst extended");
	memcpy(mt + 50000, ms + 30000, 10000);
	ok(compare(fstore, &t, mt, 60000) == -1, "dst content after extending copy");
	ok(fdata_copy_range(fstore, &t, 0, &s, n, 10) == 0, "copy from EOF returns 0");
	ok(fdata_copy_range(fstore, &s, 100, &s, 0, 200) == -EINVAL, "overlapping same-file copy -EINVAL");
	ok(fdata_copy_range(fstore, &s, 30001, &s, 3, 7000) == 7000, "same-file copy");
	memcpy(ms + 30001, ms + 3, 7000);
	ok(compare(fstore, &s, ms, n) == -1, "same-file content");
	struct fdata all[2] = { s, t };
	ok(check_all(fstore, all, 2) == NULL, "invariants hold");
	fdata_release(fstore, &s);
	fdata_release(fstore, &t);
	free(ms);
	free(mt);
	free(src);
	filestore_destroy(fstore);
}

static void test_bufvec_write(void)
{
	struct filestore *fstore = mkstore(0);
	struct fdata a, b;
	fdata_init(&a);
	fdata_init(&b);
	unsigned char blk[B];
	memset(blk, 7, B);
	/* interleave allocations so a's blocks are fragmented */
	for (int i = 0; i < 8; i++) {
		fdata_write(fstore, &a, blk, B, (uint64_t)i * B);
		fdata_write(fstore, &b, blk, B, (uint64_t)i * B);
	}
	ok(a.n >= 4, "file is fragmented (%zu extents)", a.n);
	unsigned char model[8 * B];
	memset(model, 7, sizeof(model));

	unsigned char m1[5000], m2[9000];
	fill_pattern(m1, sizeof(m1), 21);
	fill_pattern(m2, sizeof(m2), 22);
	struct fuse_bufvec *src = malloc(sizeof(*src) + sizeof(struct fuse_buf));
	*src = (struct fuse_bufvec){ .count = 2 };
	struct fuse_buf *sb = src->buf;
	sb[0] = (struct fuse_buf){ .size = sizeof(m1), .mem = m1 };
	sb[1] = (struct fuse_buf){ .size = sizeof(m2), .mem = m2 };
	ok(fdata_write_bufvec(fstore, &a, src, 1234) == 14000, "memory bufvec write across extents");
	memcpy(model + 1234, m1, sizeof(m1));
	memcpy(model + 1234 + sizeof(m1), m2, sizeof(m2));
	ok(compare(fstore, &a, model, 8 * B) == -1, "content");
	free(src);

	int p[2];
	ok(pipe(p) == 0, "pipe");
	unsigned char m3[20000];
	fill_pattern(m3, sizeof(m3), 23);
	ok(write(p[1], m3, sizeof(m3)) == (ssize_t)sizeof(m3), "fill pipe");
	struct fuse_bufvec pv = FUSE_BUFVEC_INIT(sizeof(m3));
	pv.buf[0].flags = FUSE_BUF_IS_FD;
	pv.buf[0].fd = p[0];
	ssize_t w = fdata_write_bufvec(fstore, &a, &pv, 3 * B + 17);
	ok(w == (ssize_t)sizeof(m3), "pipe (splice) bufvec write returned %zd", w);
	unsigned char big[12 * B];
	size_t want = 3 * B + 17 + sizeof(m3) > 8 * B ? 3 * B + 17 + sizeof(m3) : 8 * B;
	memset(big, 0, sizeof(big));
	memcpy(big, model, 8 * B);
	memcpy(big + 3 * B + 17, m3, sizeof(m3));
	size_t sz = a.size;
	ok(sz == want, "size after pipe write");
	ok(compare(fstore, &a, big, sz) == -1, "content after pipe write");
	close(p[0]);
	close(p[1]);
	struct fdata all[2] = { a, b };
	ok(check_all(fstore, all, 2) == NULL, "invariants hold");
	fdata_release(fstore, &a);
	fdata_release(fstore, &b);
	filestore_destroy(fstore);
}

static int count_entries(const char *dir)
{
	DIR *dp = opendir(dir);
	if (!dp)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(dp)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(dp);
	return n;
}

static void test_dir_mode(void)
{
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/filestore-dir-XXXXXX", tmpdir());
	ok(mkdtemp(dir) != NULL, "temp dir");
	struct filestore *fstore = NULL;
	char err[256] = "";
	int rc = filestore_create(&fstore, dir, 0, err, sizeof(err));
	ok(rc == 0, "dir-backed store (%s)", rc ? err : "ok");
	if (rc) {
		rmdir(dir);
		return;
	}
	ok(count_entries(dir) == 0, "store file is unlinked: directory is empty");
	struct stat st;
	ok(fstat(filestore_fd(fstore), &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 0,
	   "store is a regular file with no links");
	struct fdata d;
	fdata_init(&d);
	unsigned char src[30000], buf[60000];
	fill_pattern(src, sizeof(src), 31);
	ok(fdata_write(fstore, &d, src, sizeof(src), 20000) == (ssize_t)sizeof(src), "write");
	ok(read_back(fstore, &d, 0, 50000, buf) == 50000 && all_zero(buf, 20000) &&
		   memcmp(buf + 20000, src, sizeof(src)) == 0,
	   "read back");
	ok(fdata_fallocate(fstore, &d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 13 * B) == 0 &&
		   filestore_used(fstore) == 0,
	   "punch in dir mode");
	fdata_release(fstore, &d);
	filestore_destroy(fstore);
	ok(rmdir(dir) == 0, "directory removable after destroy");
}

/* Randomised comparison against an in-memory model, with a limit. */
#define RF 4
#define RMAX (192 * 1024)
#define RBLK (RMAX * 2 / B)

struct mfile {
	unsigned char data[RMAX * 2];
	size_t size;
	bool alloc[RBLK]; /* which blocks the model expects allocated */
};

static void malloc_range(struct mfile *m, uint64_t a, uint64_t b)
{
	for (uint64_t k = a / B; k < (b + B - 1) / B; k++)
		m->alloc[k] = true;
}

static uint64_t model_used(const struct mfile *m)
{
	uint64_t n = 0;
	for (size_t k = 0; k < RBLK; k++)
		n += m->alloc[k];
	return n * B;
}

static void test_random(void)
{
	const uint64_t limit = 384 * 1024;
	struct filestore *fstore = mkstore(limit);
	struct fdata f[RF];
	struct mfile *m = calloc(RF, sizeof(*m));
	for (int i = 0; i < RF; i++)
		fdata_init(&f[i]);
	unsigned char *src = malloc(RMAX), *buf = malloc(RMAX * 2);
	rng_state = 42;
	const char *fail = NULL;
	int failop = -1, nenospc = 0;
	char why[256] = "";
	enum { OPS = 6000 };
	for (int op = 0; op < OPS && !fail; op++) {
		int fi = (int)rnd(RF);
		struct fdata *d = &f[fi];
		struct mfile *mm = &m[fi];
		uint64_t off = rnd(RMAX - 1), len = 1 + rnd(rnd(2) ? 300 : 24000);
		if (off + len > RMAX)
			len = RMAX - off;
		int kind = (int)rnd(100);
		if (kind < 35) { /* write */
			fill_pattern(src, len, (unsigned)op);
			ssize_t r = fdata_write(fstore, d, src, len, off);
			if (r == -ENOSPC) {
				nenospc++;
			} else if (r != (ssize_t)len) {
				fail = "write";
			} else {
				memcpy(mm->data + off, src, len);
				if (off + len > mm->size)
					mm->size = off + len;
				malloc_range(mm, off, off + len);
			}
		} else if (kind < 45) { /* truncate */
			uint64_t ns = rnd(RMAX);
			if (fdata_truncate(fstore, d, ns) != 0)
				fail = "truncate";
			if (ns < mm->size) {
				memset(mm->data + ns, 0, mm->size - ns);
				for (uint64_t k = (ns + B - 1) / B; k < RBLK; k++)
					mm->alloc[k] = false;
			}
			mm->size = ns;
		} else if (kind < 55) { /* punch */
			if (fdata_fallocate(fstore, d, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len))
				fail = "punch";
			memset(mm->data + off, 0, len);
			for (uint64_t k = (off + B - 1) / B; (k + 1) * B <= off + len; k++)
				mm->alloc[k] = false;
		} else if (kind < 63) { /* zero range */
			int keep = rnd(2) ? FALLOC_FL_KEEP_SIZE : 0;
			int r = fdata_fallocate(fstore, d, FALLOC_FL_ZERO_RANGE | keep, off, len);
			if (r == -ENOSPC) {
				nenospc++;
			} else if (r) {
				fail = "zero range";
			} else {
				memset(mm->data + off, 0, len);
				malloc_range(mm, off, off + len);
				if (!keep && off + len > mm->size)
					mm->size = off + len;
			}
		} else if (kind < 70) { /* fallocate */
			int keep = rnd(2) ? FALLOC_FL_KEEP_SIZE : 0;
			int r = fdata_fallocate(fstore, d, keep, off, len);
			if (r == -ENOSPC) {
				nenospc++;
			} else if (r) {
				fail = "fallocate";
			} else {
				malloc_range(mm, off, off + len);
				if (!keep && off + len > mm->size)
					mm->size = off + len;
			}
		} else if (kind < 78) { /* copy_range */
			int si = (int)rnd(RF);
			uint64_t soff = rnd(RMAX);
			if (si == fi && soff < off + len && off < soff + len) {
				op--;
				continue;
			}
			ssize_t r = fdata_copy_range(fstore, d, off, &f[si], soff, len);
			uint64_t expect = soff >= m[si].size ? 0 : (len < m[si].size - soff ? len : m[si].size - soff);
			if (r == -ENOSPC) {
				nenospc++;
			} else if (r != (ssize_t)expect) {
				fail = "copy_range";
			} else if (expect) {
				memmove(mm->data + off, m[si].data + soff, expect);
				if (off + expect > mm->size)
					mm->size = off + expect;
				malloc_range(mm, off, off + expect);
			}
		} else { /* read */
			uint64_t roff = rnd(RMAX + 100);
			ssize_t r = read_back(fstore, d, roff, len, buf);
			size_t expect = roff >= mm->size ? 0 : (len < mm->size - roff ? len : mm->size - roff);
			if (r != (ssize_t)expect || memcmp(buf, mm->data + roff, expect))
				fail = "read";
		}
		if (!fail && d->size != mm->size)
			fail = "size";
		if (!fail && fdata_blocks(d) * 512 != model_used(mm))
			fail = "allocated blocks";
		if (!fail && op % 50 == 0) {
			for (int i = 0; i < RF && !fail; i++) {
				if (compare(fstore, &f[i], m[i].data, m[i].size) != -1)
					fail = "full compare";
				/* seek vs the model's allocation */
				for (int t = 0; t < 4 && !fail && m[i].size; t++) {
					uint64_t so = rnd(m[i].size);
					uint64_t dpos = so, hpos = so;
					while (dpos < m[i].size && !m[i].alloc[dpos / B])
						dpos = (dpos / B + 1) * B;
					while (hpos < m[i].size && m[i].alloc[hpos / B])
						hpos = (hpos / B + 1) * B;
					int64_t ed = dpos >= m[i].size ? -ENXIO : (int64_t)dpos;
					int64_t eh = hpos > m[i].size ? (int64_t)m[i].size : (int64_t)hpos;
					if (fdata_seek(&f[i], (int64_t)so, SEEK_DATA) != ed ||
					    fdata_seek(&f[i], (int64_t)so, SEEK_HOLE) != eh)
						fail = "seek";
				}
			}
			const char *w = check_all(fstore, f, RF);
			if (!fail && w) {
				snprintf(why, sizeof(why), "%s", w);
				fail = why;
			}
		}
		if (fail)
			failop = op;
	}
	ok(!fail, "%d random ops match the model (%d ENOSPC)%s%s at op %d", OPS, nenospc,
	   fail ? ": " : "", fail ? fail : "", failop);
	ok(nenospc > 0, "the limit was hit and handled atomically");
	for (int i = 0; i < RF; i++)
		fdata_release(fstore, &f[i]);
	ok(filestore_used(fstore) == 0 && filestore_hwm(fstore) == 0 && check_all(fstore, NULL, 0) == NULL,
	   "everything freed at the end");
	free(m);
	free(src);
	free(buf);
	filestore_destroy(fstore);
}

/* Several threads share one store, each with its own files. */
#define TT 4
#define TF 8
#define TMAX (64 * 1024)
struct tctx {
	struct filestore *fstore;
	struct fdata f[TF];
	unsigned char (*m)[TMAX];
	size_t msize[TF];
	uint64_t seed;
	int bad;
};

static void *thread_main(void *arg)
{
	struct tctx *t = arg;
	unsigned char *src = malloc(TMAX), *buf = malloc(TMAX);
	uint64_t x = t->seed;
#define TRND(n) (x ^= x << 13, x ^= x >> 7, x ^= x << 17, (n) ? x % (n) : 0)
	for (int op = 0; op < 3000 && !t->bad; op++) {
		int i = (int)TRND(TF);
		uint64_t off = TRND(TMAX - 1), len = 1 + TRND(12000);
		if (off + len > TMAX)
			len = TMAX - off;
		switch (TRND(5)) {
		case 0:
		case 1:
			memset(src, (int)(op & 0xff) | 1, len);
			if (fdata_write(t->fstore, &t->f[i], src, len, off) != (ssize_t)len) {
				t->bad = 1;
				break;
			}
			memcpy(t->m[i] + off, src, len);
			if (off + len > t->msize[i])
				t->msize[i] = off + len;
			break;
		case 2:
			fdata_release(t->fstore, &t->f[i]);
			memset(t->m[i], 0, TMAX);
			t->msize[i] = 0;
			break;
		case 3:
			if (fdata_fallocate(t->fstore, &t->f[i], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					    off, len))
				t->bad = 2;
			memset(t->m[i] + off, 0, len);
			break;
		default:
			if (compare(t->fstore, &t->f[i], t->m[i], t->msize[i]) != -1)
				t->bad = 3;
		}
	}
#undef TRND
	free(src);
	free(buf);
	return NULL;
}

static void test_threads(void)
{
	struct filestore *fstore = mkstore(0);
	struct tctx *t = calloc(TT, sizeof(*t));
	pthread_t th[TT];
	for (int k = 0; k < TT; k++) {
		t[k].fstore = fstore;
		t[k].m = calloc(TF, TMAX);
		t[k].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1);
		for (int i = 0; i < TF; i++)
			fdata_init(&t[k].f[i]);
		pthread_create(&th[k], NULL, thread_main, &t[k]);
	}
	int bad = 0;
	for (int k = 0; k < TT; k++) {
		pthread_join(th[k], NULL);
		bad |= t[k].bad;
	}
	ok(!bad, "%d threads x 3000 ops on a shared store match their models (%d)", TT, bad);
	struct fdata all[TT * TF];
	for (int k = 0; k < TT; k++)
		memcpy(&all[k * TF], t[k].f, sizeof(t[k].f));
	const char *why = check_all(fstore, all, TT * TF);
	ok(why == NULL, "invariants hold after concurrent use (%s)", why ? why : "ok");
	for (int k = 0; k < TT; k++) {
		for (int i = 0; i < TF; i++)
			fdata_release(fstore, &t[k].f[i]);
		free(t[k].m);
	}
	ok(filestore_used(fstore) == 0 && filestore_hwm(fstore) == 0, "all freed");
	free(t);
	filestore_destroy(fstore);
}

/* filestore_share_limit: a neighbour's use counts against the limit, and
 * the neighbour hears the room ours leaves it, in 4 MiB steps. */
static uint64_t nb_used_bytes, nb_room = UINT64_MAX;
static int nb_fits;
static uint64_t nb_used(void *arg)
{
	(void)arg;
	return nb_used_bytes;
}
static int nb_fit(void *arg, uint64_t room)
{
	(void)arg;
	nb_room = room;
	nb_fits++;
	return 0;
}

static void test_neighbour(void)
{
	const uint64_t MB = 1 << 20;
	struct filestore *fstore = mkstore(16 * MB);
	static const struct filestore_neighbour nb = { .used = nb_used, .fit = nb_fit };
	filestore_share_limit(fstore, &nb, NULL);
	ok(nb_room == 16 * MB && nb_fits == 1, "an empty store leaves the neighbour all of it");
	static unsigned char buf[1 << 20];
	struct fdata d;
	fdata_init(&d);
	nb_used_bytes = 15 * MB;
	ok(fdata_write(fstore, &d, buf, 2 * MB, 0) == -ENOSPC && filestore_used(fstore) == 0,
	   "the neighbour's 15 MiB leave no room for 2 MiB: ENOSPC, nothing taken");
	ok(fdata_write(fstore, &d, buf, MB, 0) == (ssize_t)MB, "1 MiB fits beside them");
	ok(nb_room == 12 * MB, "the neighbour is told 16 - 4 MiB (our use, in 4 MiB steps)");
	int fits = nb_fits;
	ok(fdata_write(fstore, &d, buf, 4096, MB) == -ENOSPC, "the sum at the limit: ENOSPC");
	nb_used_bytes = 10 * MB;
	ok(fdata_write(fstore, &d, buf, 4096, MB) == 4096 && nb_fits == fits,
	   "a block more in the same step tells it nothing");
	nb_used_bytes = 0;
	fdata_release(fstore, &d);
	ok(nb_room == 16 * MB, "given back: all of it is the neighbour's again");
	filestore_destroy(fstore);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	test_create();
	test_roundtrip();
	test_sparse();
	test_truncate();
	test_punch();
	test_zero_range_and_falloc();
	test_seek();
	test_enospc();
	test_copy_from_fd();
	test_copy_range();
	test_bufvec_write();
	test_dir_mode();
	test_random();
	test_threads();
	test_reuse();
	test_neighbour();
	return tap_done();
}

/* SPDX-License-Identifier: Apache-2.0 */
/* tar_writer.c: see tar_writer.h. The format: POSIX.1-2001 pax, i.e. ustar
 * headers, each preceded by a typeflag 'x' header whose records override
 * the fields that do not fit (path, linkpath, size, uid, gid, mtime) and
 * carry xattrs. */
#include "tar_writer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_CAP (1u << 20)

int tar_init(struct tar_writer *tw, tar_sink sink, void *arg)
{
	memset(tw, 0, sizeof(*tw));
	tw->buf = malloc(BUF_CAP);
	if (!tw->buf)
		return -ENOMEM;
	tw->cap = BUF_CAP;
	tw->sink = sink;
	tw->arg = arg;
	return 0;
}

void tar_free(struct tar_writer *tw)
{
	free(tw->buf);
	tw->buf = NULL;
}

static int flush(struct tar_writer *tw)
{
	if (tw->err || !tw->len)
		return tw->err;
	int res = tw->sink(tw->arg, tw->buf, tw->len);
	if (res < 0)
		tw->err = res;
	else
		tw->written += tw->len;
	tw->len = 0;
	return tw->err;
}

int tar_data(struct tar_writer *tw, const void *buf, size_t len)
{
	const char *p = buf;
	while (!tw->err && len) {
		size_t k = tw->cap - tw->len < len ? tw->cap - tw->len : len;
		memcpy(tw->buf + tw->len, p, k);
		tw->len += k;
		p += k;
		len -= k;
		if (tw->len == tw->cap)
			flush(tw);
	}
	return tw->err;
}

static int zeros(struct tar_writer *tw, size_t n)
{
	static const char zero[TAR_BLOCK];
	while (!tw->err && n) {
		size_t k = n < sizeof(zero) ? n : sizeof(zero);
		tar_data(tw, zero, k);
		n -= k;
	}
	return tw->err;
}

int tar_pad(struct tar_writer *tw, uint64_t size)
{
	return zeros(tw, (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK);
}

/* Octal, NUL-terminated, in a field of width w: false if it does not fit. */
static bool put_octal(char *field, size_t w, uint64_t v)
{
	if (w < 2 || (w - 1 < 22 && v >> (3 * (w - 1))))
		return false;
	snprintf(field, w, "%0*" PRIo64, (int)(w - 1), v);
	return true;
}

/* One pax record "LEN key=value\n"; LEN counts itself. */
static int pax_record(char **rec, size_t *len, size_t *cap, const char *key, const void *val,
		      size_t vlen)
{
	size_t body = 1 + strlen(key) + 1 + vlen + 1; /* " key=value\n" */
	size_t digits = 1, total;
	for (;;) {
		total = body + digits;
		size_t d = 1;
		for (size_t t = total; t >= 10; t /= 10)
			d++;
		if (d == digits)
			break;
		digits = d;
	}
	if (*len + total > *cap) {
		size_t c = (*len + total) * 2;
		char *g = realloc(*rec, c);
		if (!g)
			return -ENOMEM;
		*rec = g;
		*cap = c;
	}
	char *p = *rec + *len;
	int k = snprintf(p, total + 1, "%zu %s=", total, key);
	memcpy(p + k, val, vlen);
	p[k + vlen] = '\n';
	*len += total;
	return 0;
}

static void checksum(char *h)
{
	memset(h + 148, ' ', 8);
	unsigned sum = 0;
	for (size_t i = 0; i < TAR_BLOCK; i++)
		sum += (unsigned char)h[i];
	snprintf(h + 148, 8, "%06o", sum);
	h[155] = ' ';
}

static void ustar(char *h, const char *name, char type, mode_t mode, uint64_t uid, uint64_t gid,
		  uint64_t size, uint64_t mtime, const char *linkname, unsigned maj, unsigned min)
{
	memset(h, 0, TAR_BLOCK);
	strncpy(h, name, 100);
	put_octal(h + 100, 8, mode & 07777);
	if (!put_octal(h + 108, 8, uid))
		put_octal(h + 108, 8, 0);
	if (!put_octal(h + 116, 8, gid))
		put_octal(h + 116, 8, 0);
	if (!put_octal(h + 124, 12, size))
		put_octal(h + 124, 12, 0);
	if (!put_octal(h + 136, 12, mtime))
		put_octal(h + 136, 12, 0);
	h[156] = type;
	if (linkname)
		strncpy(h + 157, linkname, 100);
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	put_octal(h + 329, 8, maj);
	put_octal(h + 337, 8, min);
	checksum(h);
}

int tar_header(struct tar_writer *tw, const struct tar_entry *e)
{
	if (tw->err)
		return tw->err;
	char *rec = NULL, num[64];
	size_t rlen = 0, rcap = 0;
	int res = 0;
	char probe[12];
	bool neg_time = e->mtime < 0;
	if (strlen(e->path) > 100)
		res = res ? res : pax_record(&rec, &rlen, &rcap, "path", e->path, strlen(e->path));
	if (e->linkname && strlen(e->linkname) > 100)
		res = res ? res : pax_record(&rec, &rlen, &rcap, "linkpath", e->linkname,
					     strlen(e->linkname));
	if (!put_octal(probe, 12, e->size)) {
		int k = snprintf(num, sizeof(num), "%" PRIu64, e->size);
		res = res ? res : pax_record(&rec, &rlen, &rcap, "size", num, (size_t)k);
	}
	if (!put_octal(probe, 8, e->uid)) {
		int k = snprintf(num, sizeof(num), "%u", (unsigned)e->uid);
		res = res ? res : pax_record(&rec, &rlen, &rcap, "uid", num, (size_t)k);
	}
	if (!put_octal(probe, 8, e->gid)) {
		int k = snprintf(num, sizeof(num), "%u", (unsigned)e->gid);
		res = res ? res : pax_record(&rec, &rlen, &rcap, "gid", num, (size_t)k);
	}
	if (e->mtime_nsec || neg_time || !put_octal(probe, 12, (uint64_t)e->mtime)) {
		int k;
		if (neg_time && e->mtime_nsec) /* -1.5 s is -2 s + 0.5 s */
			k = snprintf(num, sizeof(num), "-%" PRId64 ".%09ld", -(e->mtime + 1),
				     1000000000L - e->mtime_nsec);
		else
			k = snprintf(num, sizeof(num), "%" PRId64 ".%09ld", e->mtime, e->mtime_nsec);
		res = res ? res : pax_record(&rec, &rlen, &rcap, "mtime", num, (size_t)k);
	}
	for (size_t i = 0; !res && i < e->nxattrs; i++) {
		const char *name = e->xattrs[i].name;
		if (strchr(name, '='))
			continue; /* a pax key cannot hold it */
		char key[300];
		if ((size_t)snprintf(key, sizeof(key), "SCHILY.xattr.%s", name) >= sizeof(key))
			continue;
		res = pax_record(&rec, &rlen, &rcap, key, e->xattrs[i].value, e->xattrs[i].size);
	}
	if (res < 0) {
		free(rec);
		return tw->err = res;
	}
	char h[TAR_BLOCK];
	if (rlen) {
		/* the pax header's own name: what GNU tar and bsdtar write */
		char xname[100];
		const char *base = strrchr(e->path, '/');
		snprintf(xname, sizeof(xname), "PaxHeaders/%.80s", base ? base + 1 : e->path);
		ustar(h, xname, 'x', 0644, 0, 0, rlen, neg_time ? 0 : (uint64_t)e->mtime, NULL, 0, 0);
		tar_data(tw, h, sizeof(h));
		tar_data(tw, rec, rlen);
		tar_pad(tw, rlen);
	}
	free(rec);
	ustar(h, e->path, e->type, e->mode, e->uid, e->gid, e->type == '0' ? e->size : 0,
	      neg_time ? 0 : (uint64_t)e->mtime, e->linkname, e->devmajor, e->devminor);
	return tar_data(tw, h, sizeof(h));
}

int tar_finish(struct tar_writer *tw)
{
	zeros(tw, 2 * TAR_BLOCK);
	return flush(tw);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * filestore: one fd holding the data of every upper file. See filestore.h.
 *
 * Allocator: free store ranges live in a treap keyed by store offset and
 * augmented with the largest range length in each subtree, so first-fit
 * (lowest offset with len >= n), exact lookup and coalescing are all
 * O(log n) however fragmented the store is. Ranges are punched before they
 * enter the tree, so any block handed out reads as zeros. The store's file
 * size is kept >= the high-water mark (grown in chunks) so fd segments of a
 * read bufvec never hit EOF.
 */
#include "filestore.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

#define BLK ((uint64_t)FILESTORE_BLOCK)
#define ZERO_AREA ((size_t)1 << 20)          /* static zeros for holes */
#define GROW_CHUNK ((uint64_t)4 << 20)       /* store file size granularity */
#define COPY_BUF ((size_t)256 << 10)         /* pread/pwrite fallback buffer */

/* Never written: .bss, so it costs no memory beyond the kernel zero page. */
static char zero_area[ZERO_AREA];

static inline uint64_t rdown(uint64_t x) { return x & ~(BLK - 1); }
static inline uint64_t rup(uint64_t x) { return (x + BLK - 1) & ~(BLK - 1); }
static inline uint64_t umin(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* ------------------------------------------------------------------------ */
/* free tree                                                                */

struct fnode {
	uint64_t off, len, maxlen;
	uint32_t prio;
	struct fnode *l, *r;
};

struct filestore {
	int fd;
	pthread_mutex_t lock;   /* innermost: nothing is taken under it (memoverlay.h) */
	uint64_t max_bytes;     /* as given */
	uint64_t limit;         /* in bytes, block aligned; valid if max_bytes */
	uint64_t used;          /* bytes allocated to files */
	uint64_t hwm;           /* store high-water mark */
	uint64_t fsize;         /* store file size (>= hwm) */
	uint64_t lost;          /* bytes neither used nor free (could not be recycled) */
	struct fnode *root;
	size_t nfree;
	uint32_t rng;
	atomic_bool no_punch;   /* fallocate(PUNCH_HOLE) unsupported: write zeros */
	/* filestore_share_limit: a second store under the same limit */
	const struct filestore_neighbour *nb;
	void *nb_arg;
	uint64_t nb_reserved;   /* what the neighbour was last told we may hold */
};

static inline uint64_t nmax(const struct fnode *t) { return t ? t->maxlen : 0; }

static void pull(struct fnode *t)
{
	uint64_t m = t->len;
	if (nmax(t->l) > m)
		m = t->l->maxlen;
	if (nmax(t->r) > m)
		m = t->r->maxlen;
	t->maxlen = m;
}

/* a: nodes with off < key, b: off >= key */
static void split(struct fnode *t, uint64_t key, struct fnode **a, struct fnode **b)
{
	if (!t) {
		*a = *b = NULL;
		return;
	}
	if (t->off < key) {
		split(t->r, key, &t->r, b);
		*a = t;
	} else {
		split(t->l, key, a, &t->l);
		*b = t;
	}
	pull(t);
}

static struct fnode *merge(struct fnode *a, struct fnode *b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	if (a->prio > b->prio) {
		a->r = merge(a->r, b);
		pull(a);
		return a;
	}
	b->l = merge(a, b->l);
	pull(b);
	return b;
}

/* Recompute maxlen on the path from t to the node with key. */
static void repull(struct fnode *t, uint64_t key)
{
	if (!t)
		return;
	if (key < t->off)
		repull(t->l, key);
	else if (key > t->off)
		repull(t->r, key);
	pull(t);
}

static uint32_t rnd(struct filestore *fstore)
{
	uint32_t x = fstore->rng;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	fstore->rng = x;
	return x;
}

static void tree_insert(struct filestore *fstore, struct fnode *n)
{
	struct fnode *a, *b;
	n->l = n->r = NULL;
	n->prio = rnd(fstore);
	pull(n);
	split(fstore->root, n->off, &a, &b);
	fstore->root = merge(merge(a, n), b);
	fstore->nfree++;
}

static void tree_delete(struct filestore *fstore, uint64_t key)
{
	struct fnode *a, *b, *m, *c;
	split(fstore->root, key, &a, &b);
	split(b, key + 1, &m, &c);
	fstore->root = merge(a, c);
	if (m) {
		free(m);
		fstore->nfree--;
	}
}

static struct fnode *tree_find(struct fnode *t, uint64_t key)
{
	while (t && t->off != key)
		t = key < t->off ? t->l : t->r;
	return t;
}

/* Node with the greatest off < key. */
static struct fnode *tree_pred(struct fnode *t, uint64_t key)
{
	struct fnode *best = NULL;
	while (t) {
		if (t->off < key) {
			best = t;
			t = t->r;
		} else {
			t = t->l;
		}
	}
	return best;
}

/* Node with the smallest off >= key. */
static struct fnode *tree_lower_bound(struct fnode *t, uint64_t key)
{
	struct fnode *best = NULL;
	while (t) {
		if (t->off >= key) {
			best = t;
			t = t->l;
		} else {
			t = t->r;
		}
	}
	return best;
}

/* Lowest-offset node with len >= n. */
static struct fnode *tree_first_fit(struct fnode *t, uint64_t n)
{
	while (t) {
		if (nmax(t->l) >= n)
			t = t->l;
		else if (t->len >= n)
			return t;
		else if (nmax(t->r) >= n)
			t = t->r;
		else
			return NULL;
	}
	return NULL;
}

static void tree_free_all(struct fnode *t)
{
	while (t) {
		struct fnode *r = t->r;
		tree_free_all(t->l);
		free(t);
		t = r;
	}
}

/* Take n bytes from the start of free node nd (n <= nd->len). */
static uint64_t take_from_node(struct filestore *fstore, struct fnode *nd, uint64_t n)
{
	uint64_t start = nd->off;
	if (n == nd->len) {
		tree_delete(fstore, start);
	} else {
		nd->off += n;
		nd->len -= n;
		repull(fstore->root, nd->off);
	}
	return start;
}

/* Shrink the store file when it is far above the high-water mark. Locked. */
static void store_trim(struct filestore *fstore)
{
	uint64_t target = (fstore->hwm + GROW_CHUNK - 1) / GROW_CHUNK * GROW_CHUNK;
	if (fstore->fsize > target + GROW_CHUNK) {
		if (ftruncate(fstore->fd, (off_t)target) == 0)
			fstore->fsize = target;
	}
}

/* Return [off, off+len) (already punched/zeroed) to the free tree. Locked.
 * Returns 0 or -ENOMEM (range then counted as lost). */
static int free_insert(struct filestore *fstore, uint64_t off, uint64_t len)
{
	struct fnode *p = tree_pred(fstore->root, off);
	struct fnode *s = tree_lower_bound(fstore->root, off);
	bool mp = p && p->off + p->len == off;
	bool ms = s && off + len == s->off;

	if (off + len == fstore->hwm) {
		if (mp) {
			fstore->hwm = p->off;
			tree_delete(fstore, p->off);
		} else {
			fstore->hwm = off;
		}
		store_trim(fstore);
		return 0;
	}
	if (mp && ms) {
		uint64_t skey = s->off;
		p->len += len + s->len;
		tree_delete(fstore, skey);
		repull(fstore->root, p->off);
	} else if (mp) {
		p->len += len;
		repull(fstore->root, p->off);
	} else if (ms) {
		s->off = off;
		s->len += len;
		repull(fstore->root, off);
	} else {
		struct fnode *n = malloc(sizeof(*n));
		if (!n)
			return -ENOMEM;
		n->off = off;
		n->len = len;
		tree_insert(fstore, n);
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* raw I/O helpers                                                          */

/* Returns bytes written (== len unless an error came after some progress)
 * or -errno. */
static ssize_t pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t w = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return done ? (ssize_t)done : -errno;
		}
		if (w == 0)
			return done ? (ssize_t)done : -EIO;
		done += (size_t)w;
	}
	return (ssize_t)done;
}

static int write_zeros(int fd, uint64_t off, uint64_t len)
{
	while (len) {
		size_t n = (size_t)umin(len, ZERO_AREA);
		ssize_t w = pwrite_full(fd, zero_area, n, off);
		if (w < 0)
			return (int)w;
		if ((size_t)w < n)
			return -EIO;
		off += n;
		len -= n;
	}
	return 0;
}

/* Make store [off, off+len) read as zeros, releasing memory where possible. */
static int store_zero(struct filestore *fstore, uint64_t off, uint64_t len)
{
	if (!len)
		return 0;
	if (!atomic_load_explicit(&fstore->no_punch, memory_order_relaxed)) {
		uint64_t a = rup(off), b = rdown(off + len);
		if (a < b) {
			if (fallocate(fstore->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				      (off_t)a, (off_t)(b - a)) == 0) {
				int rc = write_zeros(fstore->fd, off, a - off);
				if (rc == 0)
					rc = write_zeros(fstore->fd, b, off + len - b);
				return rc;
			}
			if (errno == EOPNOTSUPP || errno == ENOSYS)
				atomic_store_explicit(&fstore->no_punch, true, memory_order_relaxed);
			/* other errors: fall through to writing zeros */
		}
	}
	return write_zeros(fstore->fd, off, len);
}

/* Tells the neighbour (filestore_share_limit) what room the limit leaves
 * it, when our use has moved to another NB_STEP: a system call or two per
 * step, not per allocation. Caller holds the lock. */
#define NB_STEP ((uint64_t)4 << 20)
static void neighbour_refit(struct filestore *fstore)
{
	if (!fstore->nb || !fstore->max_bytes)
		return;
	uint64_t reserved = (fstore->used + NB_STEP - 1) / NB_STEP * NB_STEP;
	if (reserved == fstore->nb_reserved)
		return;
	uint64_t room = fstore->limit > reserved ? fstore->limit - reserved : 0;
	if (fstore->nb->fit(fstore->nb_arg, room) == 0)
		fstore->nb_reserved = reserved;
}

/* Give a store range back. Never fails: a range that cannot be zeroed or
 * recorded is leaked (counted in fstore->lost) rather than recycled. */
static void store_free(struct filestore *fstore, uint64_t off, uint64_t len)
{
	int zrc = store_zero(fstore, off, len);
	pthread_mutex_lock(&fstore->lock);
	fstore->used -= len;
	if (zrc < 0 || free_insert(fstore, off, len) < 0)
		fstore->lost += len;
	neighbour_refit(fstore);
	pthread_mutex_unlock(&fstore->lock);
}

void filestore_share_limit(struct filestore *fstore, const struct filestore_neighbour *nb,
			   void *arg)
{
	pthread_mutex_lock(&fstore->lock);
	fstore->nb = nb;
	fstore->nb_arg = arg;
	fstore->nb_reserved = UINT64_MAX;
	neighbour_refit(fstore);
	pthread_mutex_unlock(&fstore->lock);
}

/* ------------------------------------------------------------------------ */
/* filestore                                                                */

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
}

int filestore_create(struct filestore **out, const char *dir, uint64_t max_bytes,
		     char *err, size_t errlen)
{
	int fd, e;

	*out = NULL;
	if (!dir) {
		fd = memfd_create("memoverlay", MFD_CLOEXEC | MFD_NOEXEC_SEAL);
		if (fd < 0 && errno == EINVAL)  /* kernel < 6.3 */
			fd = memfd_create("memoverlay", MFD_CLOEXEC);
		if (fd < 0) {
			e = errno;
			set_err(err, errlen, "filestore: memfd_create failed: %s", strerror(e));
			return -e;
		}
	} else {
		fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC | O_EXCL, 0600);
		if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
			size_t n = strlen(dir) + sizeof("/.memoverlay-store-XXXXXX");
			char *path = malloc(n);
			if (!path) {
				set_err(err, errlen, "filestore: %s: %s", dir, strerror(ENOMEM));
				return -ENOMEM;
			}
			snprintf(path, n, "%s/.memoverlay-store-XXXXXX", dir);
			fd = mkostemp(path, O_CLOEXEC);
			if (fd >= 0 && unlink(path) < 0) {
				e = errno;
				close(fd);
				free(path);
				set_err(err, errlen, "filestore: cannot unlink temporary file in %s: %s",
					dir, strerror(e));
				return -e;
			}
			free(path);
		}
		if (fd < 0) {
			e = errno;
			set_err(err, errlen, "filestore: cannot create a temporary file in %s: %s",
				dir, strerror(e));
			return -e;
		}
	}

	struct filestore *fstore = calloc(1, sizeof(*fstore));
	if (!fstore) {
		close(fd);
		set_err(err, errlen, "filestore: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	if (ftruncate(fd, 0) < 0) {
		e = errno;
		close(fd);
		free(fstore);
		set_err(err, errlen, "filestore: ftruncate: %s", strerror(e));
		return -e;
	}
	e = pthread_mutex_init(&fstore->lock, NULL);
	if (e) {
		close(fd);
		free(fstore);
		set_err(err, errlen, "filestore: pthread_mutex_init: %s", strerror(e));
		return -e;
	}
	fstore->fd = fd;
	fstore->max_bytes = max_bytes;
	fstore->limit = rdown(max_bytes);
	fstore->rng = 0x9e3779b9u;
	atomic_init(&fstore->no_punch, false);
	*out = fstore;
	return 0;
}

void filestore_destroy(struct filestore *fstore)
{
	if (!fstore)
		return;
	tree_free_all(fstore->root);
	close(fstore->fd);
	pthread_mutex_destroy(&fstore->lock);
	free(fstore);
}

int filestore_fd(const struct filestore *fstore) { return fstore->fd; }

static uint64_t locked_u64(const struct filestore *fstore, const uint64_t *field)
{
	struct filestore *f = (struct filestore *)fstore;
	pthread_mutex_lock(&f->lock);
	uint64_t v = *field;
	pthread_mutex_unlock(&f->lock);
	return v;
}

uint64_t filestore_used(const struct filestore *fstore) { return locked_u64(fstore, &fstore->used); }
uint64_t filestore_limit(const struct filestore *fstore) { return fstore->max_bytes; }
uint64_t filestore_hwm(const struct filestore *fstore) { return locked_u64(fstore, &fstore->hwm); }

size_t filestore_free_ranges(const struct filestore *fstore)
{
	struct filestore *f = (struct filestore *)fstore;
	pthread_mutex_lock(&f->lock);
	size_t v = f->nfree;
	pthread_mutex_unlock(&f->lock);
	return v;
}

struct check_state {
	bool have_prev;
	uint64_t prev_end, total;
	size_t count;
	const char *why;
};

static uint64_t check_node(const struct fnode *t, struct check_state *st)
{
	if (!t)
		return 0;
	uint64_t ml = check_node(t->l, st);
	if (!st->why) {
		if (t->len == 0 || t->off % BLK || t->len % BLK)
			st->why = "empty or unaligned free range";
		else if (st->have_prev && st->prev_end >= t->off)
			st->why = "free ranges unsorted, overlapping or not coalesced";
		else if ((t->l && t->l->prio > t->prio) || (t->r && t->r->prio > t->prio))
			st->why = "heap order broken";
	}
	st->have_prev = true;
	st->prev_end = t->off + t->len;
	st->total += t->len;
	st->count++;
	uint64_t mr = check_node(t->r, st);
	uint64_t m = umax(t->len, umax(ml, mr));
	if (!st->why && m != t->maxlen)
		st->why = "maxlen augmentation wrong";
	return m;
}

int filestore_check(const struct filestore *fstore, char *err, size_t errlen)
{
	struct filestore *f = (struct filestore *)fstore;
	struct check_state st = {0};
	pthread_mutex_lock(&f->lock);
	check_node(f->root, &st);
	if (!st.why && st.count != f->nfree)
		st.why = "free range count wrong";
	if (!st.why && st.have_prev && st.prev_end >= f->hwm)
		st.why = "free range touches the high-water mark";
	if (!st.why && f->used + st.total + f->lost != f->hwm)
		st.why = "used + free + lost != high-water mark";
	if (!st.why && (f->hwm % BLK || f->used % BLK))
		st.why = "unaligned accounting";
	if (!st.why && f->fsize < f->hwm)
		st.why = "store file smaller than the high-water mark";
	if (!st.why && f->max_bytes && f->used > f->limit)
		st.why = "used above limit";
	pthread_mutex_unlock(&f->lock);
	if (st.why) {
		if (err && errlen)
			snprintf(err, errlen, "filestore: %s", st.why);
		return -EUCLEAN;
	}
	return 0;
}

static void foreach_node(const struct fnode *t, void (*cb)(uint64_t, uint64_t, void *),
			 void *arg)
{
	while (t) {
		foreach_node(t->l, cb, arg);
		cb(t->off, t->len, arg);
		t = t->r;
	}
}

void filestore_foreach_free(const struct filestore *fstore,
			    void (*cb)(uint64_t store, uint64_t len, void *arg), void *arg)
{
	struct filestore *f = (struct filestore *)fstore;
	pthread_mutex_lock(&f->lock);
	foreach_node(f->root, cb, arg);
	pthread_mutex_unlock(&f->lock);
}

/* ------------------------------------------------------------------------ */
/* extent arrays                                                            */

/* Index of the first extent ending after off. */
static size_t ext_find(const struct fdata *d, uint64_t off)
{
	size_t lo = 0, hi = d->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (d->ext[mid].off + d->ext[mid].len > off)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

static int ext_reserve(struct fdata *d, size_t extra)
{
	if (extra <= d->cap - d->n)
		return 0;
	if (extra > SIZE_MAX / sizeof(struct fextent) / 2 - d->n)
		return -ENOMEM;
	size_t nc = d->cap ? d->cap : 4;
	while (nc < d->n + extra)
		nc *= 2;
	struct fextent *p = realloc(d->ext, nc * sizeof(*p));
	if (!p)
		return -ENOMEM;
	d->ext = p;
	d->cap = nc;
	return 0;
}

/* Insert an unmapped range; capacity for one more extent must be reserved. */
static void ext_insert(struct fdata *d, uint64_t off, uint64_t store, uint64_t len)
{
	size_t i = ext_find(d, off);
	struct fextent *e = d->ext;
	bool ml = i > 0 && e[i - 1].off + e[i - 1].len == off && e[i - 1].store + e[i - 1].len == store;
	bool mr = i < d->n && off + len == e[i].off && store + len == e[i].store;

	if (ml && mr) {
		e[i - 1].len += len + e[i].len;
		memmove(&e[i], &e[i + 1], (d->n - i - 1) * sizeof(*e));
		d->n--;
	} else if (ml) {
		e[i - 1].len += len;
	} else if (mr) {
		e[i].off = off;
		e[i].store = store;
		e[i].len += len;
	} else {
		memmove(&e[i + 1], &e[i], (d->n - i) * sizeof(*e));
		e[i] = (struct fextent){ .off = off, .store = store, .len = len };
		d->n++;
	}
}

/* Unmap block-aligned [a, b) and free its store blocks. Fails (-ENOMEM)
 * only before changing anything. */
static int ext_remove(struct filestore *fstore, struct fdata *d, uint64_t a, uint64_t b)
{
	size_t first = ext_find(d, a), last = first;
	while (last < d->n && d->ext[last].off < b)
		last++;
	if (first == last)
		return 0;

	struct fextent keep[2];
	size_t nk = 0;
	const struct fextent *f = &d->ext[first], *l = &d->ext[last - 1];
	if (f->off < a)
		keep[nk++] = (struct fextent){ f->off, f->store, a - f->off };
	if (l->off + l->len > b)
		keep[nk++] = (struct fextent){ b, l->store + (b - l->off), l->off + l->len - b };
	if (nk > last - first && ext_reserve(d, 1) < 0)
		return -ENOMEM;

	for (size_t k = first; k < last; k++) {
		const struct fextent *e = &d->ext[k];
		uint64_t s = umax(e->off, a), t = umin(e->off + e->len, b);
		store_free(fstore, e->store + (s - e->off), t - s);
	}
	memmove(&d->ext[first + nk], &d->ext[last], (d->n - last) * sizeof(struct fextent));
	memcpy(&d->ext[first], keep, nk * sizeof(struct fextent));
	d->n = d->n - (last - first) + nk;
	return 0;
}

void fdata_init(struct fdata *d)
{
	d->ext = NULL;
	d->n = d->cap = 0;
	d->size = 0;
}

void fdata_release(struct filestore *fstore, struct fdata *d)
{
	for (size_t k = 0; k < d->n; k++)
		store_free(fstore, d->ext[k].store, d->ext[k].len);
	free(d->ext);
	fdata_init(d);
}

uint64_t fdata_blocks(const struct fdata *d)
{
	uint64_t s = 0;
	for (size_t k = 0; k < d->n; k++)
		s += d->ext[k].len;
	return s / 512;
}

/* ------------------------------------------------------------------------ */
/* allocation of file ranges                                                */

struct run {
	uint64_t off, len;
};

struct runvec {
	struct run *r;
	size_t n, cap;
	uint64_t total;
	struct run inl[8];
};

static void rv_init(struct runvec *rv)
{
	rv->r = rv->inl;
	rv->n = 0;
	rv->cap = sizeof(rv->inl) / sizeof(rv->inl[0]);
	rv->total = 0;
}

static void rv_free(struct runvec *rv)
{
	if (rv->r != rv->inl)
		free(rv->r);
	rv_init(rv);
}

static int rv_push(struct runvec *rv, uint64_t off, uint64_t len)
{
	if (rv->n == rv->cap) {
		if (rv->cap > SIZE_MAX / sizeof(struct run) / 4)
			return -ENOMEM;
		size_t nc = rv->cap * 2;
		struct run *p = malloc(nc * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memcpy(p, rv->r, rv->n * sizeof(*p));
		if (rv->r != rv->inl)
			free(rv->r);
		rv->r = p;
		rv->cap = nc;
	}
	rv->r[rv->n++] = (struct run){ off, len };
	rv->total += len;
	return 0;
}

/* Unmapped block ranges of d within block-aligned [a, b). */
static int collect_holes(const struct fdata *d, uint64_t a, uint64_t b, struct runvec *rv)
{
	uint64_t pos = a;
	size_t i = ext_find(d, a);
	while (pos < b) {
		if (i < d->n && d->ext[i].off <= pos) {
			pos = d->ext[i].off + d->ext[i].len;
			i++;
		} else {
			uint64_t end = i < d->n ? umin(d->ext[i].off, b) : b;
			int rc = rv_push(rv, pos, end - pos);
			if (rc < 0)
				return rc;
			pos = end;
		}
	}
	return 0;
}

/* Map every run of rv (unmapped in d) to fresh zeroed store blocks, all or
 * nothing: -ENOSPC over the limit, -ENOMEM, or -errno growing the store. */
static int alloc_runs(struct filestore *fstore, struct fdata *d, const struct runvec *rv)
{
	if (!rv->n)
		return 0;
	if (rv->n > SIZE_MAX / 4)
		return -ENOMEM;
	int rc = ext_reserve(d, 2 * rv->n);
	if (rc < 0)
		return rc;

	pthread_mutex_lock(&fstore->lock);
	uint64_t used = fstore->used;
	if (fstore->nb && fstore->max_bytes)
		used += fstore->nb->used(fstore->nb_arg);
	if (fstore->max_bytes && (used > fstore->limit || rv->total > fstore->limit - used)) {
		pthread_mutex_unlock(&fstore->lock);
		return -ENOSPC;
	}
	/* Worst case everything comes from the high-water mark. */
	if (rv->total > FILESTORE_MAX_SIZE - fstore->hwm) {
		pthread_mutex_unlock(&fstore->lock);
		return -ENOSPC;
	}
	if (fstore->hwm + rv->total > fstore->fsize) {
		uint64_t want = fstore->hwm + rv->total;
		uint64_t ns = want > FILESTORE_MAX_SIZE - GROW_CHUNK
				      ? FILESTORE_MAX_SIZE
				      : (want + GROW_CHUNK - 1) / GROW_CHUNK * GROW_CHUNK;
		if (ftruncate(fstore->fd, (off_t)ns) < 0) {
			rc = -errno;
			pthread_mutex_unlock(&fstore->lock);
			return rc == -EFBIG ? -ENOSPC : rc;
		}
		fstore->fsize = ns;
	}

	for (size_t k = 0; k < rv->n; k++) {
		uint64_t foff = rv->r[k].off, rem = rv->r[k].len;
		size_t i = ext_find(d, foff);
		if (i > 0 && d->ext[i - 1].off + d->ext[i - 1].len == foff) {
			/* Try to continue the previous extent contiguously. */
			uint64_t hint = d->ext[i - 1].store + d->ext[i - 1].len;
			if (hint == fstore->hwm) {
				fstore->hwm += rem;
				ext_insert(d, foff, hint, rem);
				continue;
			}
			struct fnode *nd = tree_find(fstore->root, hint);
			if (nd) {
				uint64_t take = umin(rem, nd->len);
				take_from_node(fstore, nd, take);
				ext_insert(d, foff, hint, take);
				foff += take;
				rem -= take;
			}
		}
		if (rem) {
			uint64_t store;
			struct fnode *nd = tree_first_fit(fstore->root, rem);
			if (nd) {
				store = take_from_node(fstore, nd, rem);
			} else {
				store = fstore->hwm;
				fstore->hwm += rem;
			}
			ext_insert(d, foff, store, rem);
		}
	}
	fstore->used += rv->total;
	neighbour_refit(fstore);
	pthread_mutex_unlock(&fstore->lock);
	return 0;
}

/* Undo alloc_runs for the part of its runs at or past file offset `from`
 * (block aligned). Those blocks were never written, so they are still zero
 * and unmapping them is invisible. */
static void unmap_runs_from(struct filestore *fstore, struct fdata *d, const struct runvec *rv,
			    uint64_t from)
{
	for (size_t k = 0; k < rv->n; k++) {
		uint64_t a = umax(rv->r[k].off, from), b = rv->r[k].off + rv->r[k].len;
		if (a < b)
			(void)ext_remove(fstore, d, a, b);
	}
}

/* Map every block touching byte range [a, b). Runs allocated go to rv. */
static int ensure_mapped(struct filestore *fstore, struct fdata *d, uint64_t a, uint64_t b,
			 struct runvec *rv)
{
	int rc = collect_holes(d, rdown(a), rup(b), rv);
	if (rc == 0)
		rc = alloc_runs(fstore, d, rv);
	if (rc < 0)
		rv_free(rv);
	return rc;
}

static int check_range(uint64_t off, uint64_t len)
{
	if (off > FILESTORE_MAX_SIZE || len > FILESTORE_MAX_SIZE - off)
		return -EFBIG;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* data operations                                                          */

ssize_t fdata_write(struct filestore *fstore, struct fdata *d, const void *buf, size_t len,
		    uint64_t off)
{
	if (len == 0)
		return 0;
	if (len > SSIZE_MAX)
		return -EINVAL;
	int rc = check_range(off, len);
	if (rc < 0)
		return rc;

	struct runvec rv;
	rv_init(&rv);
	rc = ensure_mapped(fstore, d, off, off + len, &rv);
	if (rc < 0)
		return rc;

	size_t done = 0;
	ssize_t err = 0;
	size_t i = ext_find(d, off);
	while (done < len) {
		const struct fextent *e = &d->ext[i++];
		uint64_t pos = off + done, in = pos - e->off;
		size_t n = (size_t)umin(e->len - in, len - done);
		ssize_t w = pwrite_full(fstore->fd, (const char *)buf + done, n, e->store + in);
		if (w < 0) {
			err = w;
			break;
		}
		done += (size_t)w;
		if ((size_t)w < n) {
			err = -EIO;
			break;
		}
	}
	if (done < len)
		unmap_runs_from(fstore, d, &rv, done ? rup(off + done) : 0);
	rv_free(&rv);
	if (done == 0)
		return err;
	if (off + done > d->size)
		d->size = off + done;
	return (ssize_t)done;
}

ssize_t fdata_write_bufvec(struct filestore *fstore, struct fdata *d, struct fuse_bufvec *src,
			   uint64_t off)
{
	size_t len = 0;
	for (size_t k = src->idx; k < src->count; k++) {
		if (src->buf[k].size > SSIZE_MAX - len)
			return -EINVAL;
		len += src->buf[k].size;
	}
	if (src->idx < src->count)
		len = len > src->off ? len - src->off : 0;
	if (len == 0)
		return 0;
	int rc = check_range(off, len);
	if (rc < 0)
		return rc;

	struct runvec rv;
	rv_init(&rv);
	rc = ensure_mapped(fstore, d, off, off + len, &rv);
	if (rc < 0)
		return rc;

	size_t first = ext_find(d, off), last = first;
	while (last < d->n && d->ext[last].off < off + len)
		last++;
	size_t nseg = last - first;
	struct fuse_bufvec *dst =
		malloc(sizeof(*dst) + (nseg > 1 ? nseg - 1 : 0) * sizeof(struct fuse_buf));
	if (!dst) {
		unmap_runs_from(fstore, d, &rv, 0);
		rv_free(&rv);
		return -ENOMEM;
	}
	*dst = (struct fuse_bufvec){ .count = nseg };
	struct fuse_buf *b = dst->buf;
	for (size_t k = 0; k < nseg; k++) {
		const struct fextent *e = &d->ext[first + k];
		uint64_t s = umax(e->off, off), t = umin(e->off + e->len, off + len);
		b[k] = (struct fuse_buf){
			.size = (size_t)(t - s),
			.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK,
			.fd = fstore->fd,
			.pos = (off_t)(e->store + (s - e->off)),
		};
	}
	ssize_t res = fuse_buf_copy(dst, src, 0);
	free(dst);
	if (res < (ssize_t)len)
		unmap_runs_from(fstore, d, &rv, res > 0 ? rup(off + (uint64_t)res) : 0);
	rv_free(&rv);
	if (res <= 0)
		return res;
	if (off + (uint64_t)res > d->size)
		d->size = off + (uint64_t)res;
	return res;
}

int fdata_read(struct filestore *fstore, const struct fdata *d, uint64_t off, size_t len,
	       struct fuse_bufvec **out)
{
	*out = NULL;
	uint64_t end = off >= d->size ? off : off + umin(len, d->size - off);

	/* pass 0 counts segments, pass 1 fills them */
	struct fuse_bufvec *v = NULL;
	size_t nseg = 0;
	for (int pass = 0; pass < 2; pass++) {
		struct fuse_buf *b = v ? v->buf : NULL;
		size_t k = 0;
		uint64_t pos = off;
		size_t i = ext_find(d, off);
		while (pos < end) {
			if (i < d->n && d->ext[i].off <= pos) {
				const struct fextent *e = &d->ext[i++];
				uint64_t t = umin(e->off + e->len, end);
				if (b)
					b[k] = (struct fuse_buf){
						.size = (size_t)(t - pos),
						.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK,
						.fd = fstore->fd,
						.pos = (off_t)(e->store + (pos - e->off)),
					};
				k++;
				pos = t;
			} else {
				uint64_t t = i < d->n ? umin(d->ext[i].off, end) : end;
				while (pos < t) {
					size_t n = (size_t)umin(t - pos, ZERO_AREA);
					if (b)
						b[k] = (struct fuse_buf){ .size = n, .mem = zero_area };
					k++;
					pos += n;
				}
			}
		}
		if (pass == 0) {
			nseg = k;
			size_t extra = nseg > 1 ? nseg - 1 : 0;
			if (extra > (SIZE_MAX - sizeof(*v)) / sizeof(struct fuse_buf))
				return -ENOMEM;
			v = malloc(sizeof(*v) + extra * sizeof(struct fuse_buf));
			if (!v)
				return -ENOMEM;
			*v = (struct fuse_bufvec){ .count = nseg ? nseg : 1 };
			v->buf[0] = (struct fuse_buf){ .size = 0, .mem = zero_area };
		}
	}
	*out = v;
	return 0;
}

/* Zero the mapped bytes of d within [a, b). */
static int zero_file_range(struct filestore *fstore, const struct fdata *d, uint64_t a, uint64_t b)
{
	for (size_t i = ext_find(d, a); i < d->n && d->ext[i].off < b; i++) {
		const struct fextent *e = &d->ext[i];
		uint64_t s = umax(e->off, a), t = umin(e->off + e->len, b);
		int rc = store_zero(fstore, e->store + (s - e->off), t - s);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int fdata_truncate(struct filestore *fstore, struct fdata *d, uint64_t size)
{
	if (size > FILESTORE_MAX_SIZE)
		return -EFBIG;
	if (size < d->size) {
		uint64_t bend = rup(size);
		if (size != bend) {
			/* bytes past the old size are already zero */
			int rc = zero_file_range(fstore, d, size, umin(bend, d->size));
			if (rc < 0)
				return rc;
		}
		/* removing a suffix never splits an extent, so this cannot fail */
		(void)ext_remove(fstore, d, bend, UINT64_MAX);
	}
	d->size = size;
	return 0;
}

/* fallocate(2) promises that writing the range cannot fail for lack of
 * space, so the store's fd gets the memory (or disk) for the runs just
 * mapped now, as tmpfs does; where it is not there: ENOSPC. */
static int back_runs(struct filestore *fstore, const struct fdata *d, const struct runvec *rv)
{
	for (size_t k = 0; k < rv->n; k++) {
		uint64_t pos = rv->r[k].off, end = pos + rv->r[k].len;
		for (size_t i = ext_find(d, pos); pos < end; i++) {
			const struct fextent *e = &d->ext[i];
			uint64_t in = pos - e->off, n = umin(e->len - in, end - pos);
			if (fallocate(fstore->fd, 0, (off_t)(e->store + in), (off_t)n) < 0 &&
			    errno != EOPNOTSUPP)
				return errno == ENOMEM || errno == EFBIG ? -ENOSPC : -errno;
			pos += n;
		}
	}
	return 0;
}

int fdata_fallocate(struct filestore *fstore, struct fdata *d, int mode, uint64_t off,
		    uint64_t len)
{
	const int keep = FALLOC_FL_KEEP_SIZE;
	if (mode != 0 && mode != keep && mode != (FALLOC_FL_PUNCH_HOLE | keep) &&
	    mode != FALLOC_FL_ZERO_RANGE && mode != (FALLOC_FL_ZERO_RANGE | keep))
		return -EOPNOTSUPP;
	if (len == 0)
		return -EINVAL;
	int rc = check_range(off, len);
	if (rc < 0)
		return rc;
	uint64_t end = off + len;

	if (mode & FALLOC_FL_PUNCH_HOLE) {
		uint64_t a = rup(off), b = rdown(end);
		if (a >= b)
			return zero_file_range(fstore, d, off, end);
		/* reserve for a split first, so nothing fails after zeroing */
		rc = ext_reserve(d, 1);
		if (rc == 0)
			rc = zero_file_range(fstore, d, off, a);
		if (rc == 0)
			rc = zero_file_range(fstore, d, b, end);
		if (rc == 0)
			rc = ext_remove(fstore, d, a, b);
		return rc;
	}

	struct runvec rv;
	rv_init(&rv);
	rc = ensure_mapped(fstore, d, off, end, &rv);
	if (rc < 0)
		return rc;
	rc = back_runs(fstore, d, &rv);
	if (rc < 0) {
		unmap_runs_from(fstore, d, &rv, 0);
		rv_free(&rv);
		return rc;
	}
	if (mode & FALLOC_FL_ZERO_RANGE) {
		/* fresh blocks are zero already; zero what was mapped before */
		uint64_t pos = off;
		for (size_t k = 0; k <= rv.n && rc == 0; k++) {
			uint64_t t = k < rv.n ? umax(rv.r[k].off, off) : end;
			if (t > pos)
				rc = zero_file_range(fstore, d, pos, t);
			if (k < rv.n)
				pos = umax(pos, rv.r[k].off + rv.r[k].len);
		}
		if (rc < 0) {
			rv_free(&rv);
			return rc;
		}
	}
	rv_free(&rv);
	if (!(mode & keep) && end > d->size)
		d->size = end;
	return 0;
}

int64_t fdata_seek(const struct fdata *d, int64_t off, int whence)
{
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	if (off < 0 || (uint64_t)off >= d->size)
		return -ENXIO;
	uint64_t pos = (uint64_t)off;
	size_t i = ext_find(d, pos);
	if (whence == SEEK_DATA) {
		if (i == d->n)
			return -ENXIO;
		pos = umax(pos, d->ext[i].off);
		return pos >= d->size ? -ENXIO : (int64_t)pos;
	}
	for (; i < d->n && d->ext[i].off <= pos && pos < d->size; i++)
		pos = d->ext[i].off + d->ext[i].len;
	return (int64_t)umin(pos, d->size);
}

/* In-kernel copying with fallbacks: copy_file_range (same filesystem), then
 * splice through a pipe (any two fds, still no copy to user space), then
 * pread/pwrite. A copier remembers what did not work for one operation. */
struct copier {
	bool no_cfr, no_splice;
	int pipe[2];
	char *buf;
};

static void copier_init(struct copier *c)
{
	c->no_cfr = c->no_splice = false;
	c->pipe[0] = c->pipe[1] = -1;
	c->buf = NULL;
}

static void copier_close_pipe(struct copier *c)
{
	if (c->pipe[0] >= 0) {
		close(c->pipe[0]);
		close(c->pipe[1]);
	}
	c->pipe[0] = c->pipe[1] = -1;
}

static void copier_done(struct copier *c)
{
	copier_close_pipe(c);
	free(c->buf);
	c->buf = NULL;
}

#define COPY_UNSUPPORTED (-100000) /* method not usable: try the next one */

static ssize_t copy_step_splice(struct copier *c, int in, uint64_t ioff, int out, uint64_t ooff,
				size_t len)
{
	if (c->pipe[0] < 0) {
		if (pipe2(c->pipe, O_CLOEXEC) < 0)
			return COPY_UNSUPPORTED; /* e.g. EMFILE: pread/pwrite needs no fd */
		(void)fcntl(c->pipe[1], F_SETPIPE_SZ, (int)COPY_BUF * 4);
	}
	loff_t io = (loff_t)ioff;
	ssize_t got;
	do
		got = splice(in, &io, c->pipe[1], NULL, len, SPLICE_F_MOVE);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		return errno == EINVAL || errno == ENOSYS ? COPY_UNSUPPORTED : -errno;
	size_t put = 0;
	while (put < (size_t)got) {
		loff_t oo = (loff_t)(ooff + put);
		ssize_t w = splice(c->pipe[0], NULL, out, &oo, (size_t)got - put, SPLICE_F_MOVE);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			copier_close_pipe(c); /* drop what is left in it */
			if (put)
				return (ssize_t)put;
			return e == EINVAL || e == ENOSYS ? COPY_UNSUPPORTED : -e;
		}
		put += (size_t)w;
	}
	return got;
}

static ssize_t copy_step_rw(struct copier *c, int in, uint64_t ioff, int out, uint64_t ooff,
			    size_t len)
{
	if (!c->buf && !(c->buf = malloc(COPY_BUF)))
		return -ENOMEM;
	ssize_t r;
	do
		r = pread(in, c->buf, umin(len, COPY_BUF), (off_t)ioff);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return r < 0 ? -errno : 0;
	ssize_t w = pwrite_full(out, c->buf, (size_t)r, ooff);
	return w == 0 ? -EIO : w;
}

/* Copy [ioff, ioff+len) of in to out at ooff. Returns bytes copied (short
 * only at EOF of in, or after an error that followed some progress) or
 * -errno if nothing was copied. */
static ssize_t copy_fd(struct copier *c, int in, uint64_t ioff, int out, uint64_t ooff,
		       uint64_t len)
{
	uint64_t done = 0;
	while (done < len) {
		size_t chunk = (size_t)umin(len - done, (size_t)1 << 30);
		ssize_t r;
		if (!c->no_cfr) {
			loff_t io = (loff_t)(ioff + done), oo = (loff_t)(ooff + done);
			r = copy_file_range(in, &io, out, &oo, chunk, 0);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP ||
				    errno == ENOSYS) {
					c->no_cfr = true;
					continue;
				}
				r = -errno;
			}
		} else if (!c->no_splice) {
			r = copy_step_splice(c, in, ioff + done, out, ooff + done, chunk);
			if (r == COPY_UNSUPPORTED) {
				c->no_splice = true;
				continue;
			}
		} else {
			r = copy_step_rw(c, in, ioff + done, out, ooff + done, chunk);
		}
		if (r < 0)
			return done ? (ssize_t)done : r;
		if (r == 0)
			break;
		done += (uint64_t)r;
	}
	return (ssize_t)done;
}

/* Copy bytes [a, b) of srcfd into the (mapped) same range of d.
 * Returns 0, 1 if srcfd hit EOF, or -errno. */
static int copy_in(struct filestore *fstore, struct copier *c, const struct fdata *d, int srcfd,
		   uint64_t a, uint64_t b)
{
	uint64_t pos = a;
	size_t i = ext_find(d, a);
	while (pos < b) {
		const struct fextent *e = &d->ext[i++];
		uint64_t t = umin(e->off + e->len, b);
		ssize_t r = copy_fd(c, srcfd, pos, fstore->fd, e->store + (pos - e->off), t - pos);
		if (r < 0)
			return (int)r;
		if ((uint64_t)r < t - pos)
			return 1;
		pos = t;
	}
	return 0;
}

int fdata_copy_from_fd(struct filestore *fstore, struct fdata *d, int srcfd, uint64_t len)
{
	if (len > FILESTORE_MAX_SIZE)
		return -EFBIG;
	struct runvec segs, runs;
	struct fdata nd;
	struct copier cp;
	int rc = 0;
	copier_init(&cp);
	rv_init(&segs);
	rv_init(&runs);
	fdata_init(&nd);

	/* data segments of the source */
	uint64_t pos = 0;
	bool sparse_ok = true;
	while (pos < len) {
		off_t ds = lseek(srcfd, (off_t)pos, SEEK_DATA);
		if (ds < 0) {
			if (errno == ENXIO)
				break;
			sparse_ok = false;
			break;
		}
		if ((uint64_t)ds >= len)
			break;
		off_t hs = lseek(srcfd, ds, SEEK_HOLE);
		uint64_t he = hs < 0 ? len : umin((uint64_t)hs, len);
		if (he <= (uint64_t)ds) /* file changed under us */
			he = len;
		rc = rv_push(&segs, (uint64_t)ds, he - (uint64_t)ds);
		if (rc < 0)
			goto out;
		pos = he;
	}
	if (!sparse_ok) {
		segs.n = 0;
		segs.total = 0;
		if (len && (rc = rv_push(&segs, 0, len)) < 0)
			goto out;
	}

	for (size_t k = 0; k < segs.n; k++) {
		uint64_t a = rdown(segs.r[k].off), b = rup(segs.r[k].off + segs.r[k].len);
		if (runs.n && runs.r[runs.n - 1].off + runs.r[runs.n - 1].len >= a) {
			struct run *r = &runs.r[runs.n - 1];
			uint64_t ne = umax(r->off + r->len, b);
			runs.total += ne - (r->off + r->len);
			r->len = ne - r->off;
		} else if ((rc = rv_push(&runs, a, b - a)) < 0) {
			goto out;
		}
	}
	rc = alloc_runs(fstore, &nd, &runs);
	if (rc < 0)
		goto out;
	for (size_t k = 0; k < segs.n; k++) {
		rc = copy_in(fstore, &cp, &nd, srcfd, segs.r[k].off, segs.r[k].off + segs.r[k].len);
		if (rc < 0)
			goto out;
		if (rc == 1) { /* source shorter than len: the rest reads as zeros */
			rc = 0;
			break;
		}
	}
	nd.size = len;
	fdata_release(fstore, d);
	*d = nd;
	fdata_init(&nd);
out:
	copier_done(&cp);
	fdata_release(fstore, &nd);
	rv_free(&segs);
	rv_free(&runs);
	return rc;
}

ssize_t fdata_copy_range(struct filestore *fstore, struct fdata *dst, uint64_t dst_off,
			 const struct fdata *src, uint64_t src_off, size_t len)
{
	if (src_off >= src->size || len == 0)
		return 0;
	len = (size_t)umin(len, src->size - src_off);
	if (len > SSIZE_MAX)
		len = SSIZE_MAX & ~(size_t)(BLK - 1);
	int rc = check_range(dst_off, len);
	if (rc < 0)
		return rc;
	if (dst == src && src_off < dst_off + len && dst_off < src_off + len)
		return -EINVAL;

	struct runvec rv;
	rv_init(&rv);
	rc = ensure_mapped(fstore, dst, dst_off, dst_off + len, &rv);
	if (rc < 0)
		return rc;

	uint64_t done = 0;
	ssize_t err = 0;
	struct copier cp;
	copier_init(&cp);
	size_t si = ext_find(src, src_off), di = ext_find(dst, dst_off);
	while (done < len) {
		uint64_t s = src_off + done, t = dst_off + done;
		while (si < src->n && src->ext[si].off + src->ext[si].len <= s)
			si++;
		while (di < dst->n && dst->ext[di].off + dst->ext[di].len <= t)
			di++;
		const struct fextent *de = &dst->ext[di];
		uint64_t dstore = de->store + (t - de->off);
		uint64_t n = umin(len - done, de->off + de->len - t);
		ssize_t r;
		if (si < src->n && src->ext[si].off <= s) {
			const struct fextent *se = &src->ext[si];
			n = umin(n, se->off + se->len - s);
			r = copy_fd(&cp, fstore->fd, se->store + (s - se->off), fstore->fd, dstore, n);
			if (r >= 0 && (uint64_t)r < n) {
				done += (uint64_t)r;
				err = -EIO;
				break;
			}
		} else {
			if (si < src->n)
				n = umin(n, src->ext[si].off - s);
			int zr = write_zeros(fstore->fd, dstore, n);
			r = zr < 0 ? zr : (ssize_t)n;
		}
		if (r < 0) {
			err = r;
			break;
		}
		done += n;
	}
	copier_done(&cp);
	if (done < len)
		unmap_runs_from(fstore, dst, &rv, done ? rup(dst_off + done) : 0);
	rv_free(&rv);
	if (done == 0)
		return err;
	if (dst_off + done > dst->size)
		dst->size = dst_off + done;
	return (ssize_t)done;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* export.c: the upper layer as an OCI image layer tar (export.h).
 *
 * Two phases, so that no lock is held while the client reads:
 *   1. plan, under ns_lock for reading: walk the upper tree and copy
 *      every entry's path and metadata (owner, mode, times, xattrs,
 *      symlink target) into a list; regular files keep a pin on their
 *      node. Namespace changes (create, rename, unlink) wait for this
 *      walk (50-80 ms for 100,000 files); lookups, reads, writes and stat
 *      do not: the lock is shared. So the tree is one instant's.
 *   2. stream, without ns_lock: for each file, under its node's lock,
 *      its size, times and data are taken together — small files copied
 *      into memory, big ones copied aside inside the filestore (an
 *      in-kernel copy of its extents; the lower parts of a lazily copied
 *      file need no copy, the lower file never changes) — and written to
 *      the sink after the lock is dropped. A concurrent write is thus
 *      wholly in the export or wholly out, and a writer of a 1 GiB file
 *      waits for one in-kernel copy, not for the client.
 *
 * What the tar holds is what kernel overlayfs would have in its upper
 * directory, in OCI's words: a directory that merges the lower ones at
 * the same path is an entry and its changed children; a removed lower
 * name is .wh.NAME; a directory that does not merge at its place (new,
 * opaque, or renamed from elsewhere: memoverlay keeps no redirect) is
 * .wh..wh..opq followed by everything it shows, as kernel overlayfs
 * without redirect_dir copies a renamed directory. */
#include "memoverlay.h"
#include "export.h"
#include "lower_links.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define OPAQUE_NAME ".wh..wh..opq"
#define WHITEOUT_PREFIX ".wh."
/* Files up to this size are copied into memory under their lock; bigger
 * ones into the filestore. */
#define SMALL_FILE (1u << 20)
#define CHUNK (1u << 20)

struct xent {
	char *path;
	char type;              /* tar typeflag; '0' with n set: data to read */
	struct stat st;
	struct tar_xattr *xattrs;
	size_t nxattrs;
	char *link;             /* symlink target, hard link target path */
	struct node *n;         /* regular files: pinned */
};

struct plan {
	struct ovl *fs;
	struct xent *e;
	size_t n, cap;
	/* hard links: node -> index of its first entry (open addressing) */
	struct node **hk;
	size_t *hv;
	size_t hcap, hn;
	/* planned paths (entry indices + 1, open addressing), made only for
	 * the walk of lower hard links */
	size_t *pset;
	size_t pcap;
	const bool *stop;
};

/* A file to be read later holds its data as an open file would (nopen),
 * so an unlink in between cannot give the data back before it is read
 * (upper_drop_unreachable_data); then it lets go as a release would. */
static void hold_file(struct ovl *fs, struct node *n)
{
	node_ref(fs, n, false);
	pthread_mutex_lock(&n->lock);
	n->nopen++;
	pthread_mutex_unlock(&n->lock);
}

static void release_file(struct ovl *fs, struct node *n)
{
	pthread_mutex_lock(&n->lock);
	n->nopen--;
	upper_drop_unreachable_data(fs, n);
	pthread_mutex_unlock(&n->lock);
	node_put(fs, n);
}

static void xattrs_free(struct tar_xattr *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free((void *)x[i].name);
		free((void *)x[i].value);
	}
	free(x);
}

static void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->e[i].path);
		free(p->e[i].link);
		xattrs_free(p->e[i].xattrs, p->e[i].nxattrs);
		if (p->e[i].n)
			release_file(p->fs, p->e[i].n);
	}
	free(p->e);
	free(p->hk);
	free(p->hv);
	free(p->pset);
}

static struct xent *plan_add(struct plan *p, char *path, char type)
{
	if (!path)
		return NULL;
	if (p->n == p->cap) {
		size_t c = p->cap ? 2 * p->cap : 1024;
		struct xent *g = realloc(p->e, c * sizeof(*g));
		if (!g) {
			free(path);
			return NULL;
		}
		p->e = g;
		p->cap = c;
	}
	struct xent *e = &p->e[p->n++];
	memset(e, 0, sizeof(*e));
	e->path = path;
	e->type = type;
	return e;
}

static size_t ptr_hash(const void *ptr, size_t cap)
{
	uint64_t h = (uint64_t)(uintptr_t)ptr * 0x9e3779b97f4a7c15ULL;
	return (size_t)(h >> 20) & (cap - 1);
}

/* The index of n's first entry, or SIZE_MAX (and idx noted as its first). */
static int link_seen(struct plan *p, struct node *n, size_t idx, size_t *first)
{
	if (2 * (p->hn + 1) > p->hcap) {
		size_t c = p->hcap ? 2 * p->hcap : 256;
		struct node **k = calloc(c, sizeof(*k));
		size_t *v = calloc(c, sizeof(*v));
		if (!k || !v) {
			free(k);
			free(v);
			return -ENOMEM;
		}
		for (size_t i = 0; i < p->hcap; i++) {
			if (!p->hk[i])
				continue;
			size_t j = ptr_hash(p->hk[i], c);
			while (k[j])
				j = (j + 1) & (c - 1);
			k[j] = p->hk[i];
			v[j] = p->hv[i];
		}
		free(p->hk);
		free(p->hv);
		p->hk = k;
		p->hv = v;
		p->hcap = c;
	}
	size_t j = ptr_hash(n, p->hcap);
	while (p->hk[j] && p->hk[j] != n)
		j = (j + 1) & (p->hcap - 1);
	if (p->hk[j]) {
		*first = p->hv[j];
		return 0;
	}
	p->hk[j] = n;
	p->hv[j] = idx;
	p->hn++;
	*first = SIZE_MAX;
	return 0;
}

static char type_of(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return '0';
	case S_IFLNK: return '2';
	case S_IFCHR: return '3';
	case S_IFBLK: return '4';
	case S_IFDIR: return '5';
	case S_IFIFO: return '6';
	default: return 0;      /* sockets: tar has no type for them */
	}
}

/* An upper node's attributes as users see them; n->lock held. */
static void upper_stat_locked(struct ovl *fs, struct node *n, struct stat *st)
{
	*st = n->upper->st;
	if (upper_data_is_up(&n->upper->data))
		st->st_size = (off_t)upper_data_size(&n->upper->data);
	st->st_ino = n->st_ino;
	idmap_show(&fs->cfg, st, false);
}

static int copy_upper_meta(struct ovl *fs, struct node *n, struct xent *e)
{
	int res = 0;
	pthread_mutex_lock(&n->lock);
	struct upper *u = n->upper;
	upper_stat_locked(fs, n, &e->st);
	if (u->symlink && !(e->link = strdup(u->symlink)))
		res = -ENOMEM;
	if (res == 0 && u->nxattrs) {
		e->xattrs = calloc(u->nxattrs, sizeof(*e->xattrs));
		if (!e->xattrs)
			res = -ENOMEM;
		for (size_t i = 0; res == 0 && i < u->nxattrs; i++) {
			char *name = strdup(u->xattrs[i].name);
			void *val = malloc(u->xattrs[i].size ? u->xattrs[i].size : 1);
			if (name && val)
				memcpy(val, u->xattrs[i].value, u->xattrs[i].size);
			e->xattrs[i] = (struct tar_xattr){ name, val, u->xattrs[i].size };
			e->nxattrs = i + 1;
			if (!name || !val)
				res = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&n->lock);
	return res;
}

static int add_tar_xattr(const char *name, char *value, size_t size, void *arg)
{
	struct xent *e = arg;
	struct tar_xattr *g = realloc(e->xattrs, (e->nxattrs + 1) * sizeof(*g));
	if (g)
		e->xattrs = g;
	char *dup = strdup(name);
	if (!g || !dup) {
		free(value);
		free(dup);
		return -ENOMEM;
	}
	e->xattrs[e->nxattrs++] = (struct tar_xattr){ dup, value, size };
	return 0;
}

/* A lower-only object (inside a directory copied whole): its xattrs and
 * symlink target from its top lower layer. */
static int copy_lower_meta(struct ovl *fs, struct node *n, struct xent *e)
{
	if (S_ISLNK(n->type)) {
		char buf[PATH_MAX + 1];
		int res = ovl_read_lower_link(fs, n, buf, sizeof(buf));
		if (res < 0)
			return res;
		if (!(e->link = strdup(buf)))
			return -ENOMEM;
	}
	char path[PATH_MAX + 64];
	int fd;
	int res = lower_xattr_path(fs, n, path, sizeof(path), &fd);
	if (res < 0)
		return res == -ENODATA ? 0 : res;
	res = xattrs_each(path, true, add_tar_xattr, e);
	if (fd >= 0)
		close(fd);
	/* a lower layer that cannot list its xattrs exports the object
	 * without them, as before; running out of memory still fails */
	return res == -ENOMEM ? res : 0;
}

/* One object at path: its entry (or a hard link to its first one). */
static int plan_object(struct plan *p, struct node *n, char *path)
{
	struct ovl *fs = p->fs;
	char type = type_of(n->type);
	if (!type) {
		free(path);
		return 0;
	}
	struct xent *e = plan_add(p, path, type);
	if (!e)
		return -ENOMEM;
	size_t idx = p->n - 1;
	int res;
	if (n->upper) {
		res = copy_upper_meta(fs, n, e);
	} else {
		res = ovl_getattr_node(fs, n, &e->st);
		if (res == 0)
			res = copy_lower_meta(fs, n, e);
	}
	if (res < 0)
		return res;
	if (type != '5' && e->st.st_nlink > 1) {
		size_t first;
		if ((res = link_seen(p, n, idx, &first)) < 0)
			return res;
		if (first != SIZE_MAX) { /* the inode's data and xattrs went with its first name */
			e->type = '1';
			free(e->link);
			xattrs_free(e->xattrs, e->nxattrs);
			e->xattrs = NULL;
			e->nxattrs = 0;
			e->link = strdup(p->e[first].path);
			return e->link ? 0 : -ENOMEM;
		}
	}
	if (type == '0') {
		hold_file(fs, n);
		e->n = n;
	}
	return 0;
}

static int plan_marker(struct plan *p, const char *dir, const char *prefix, const char *name)
{
	size_t k = strlen(dir) + strlen(prefix) + strlen(name) + 2;
	char *path = malloc(k);
	if (!path)
		return -ENOMEM;
	snprintf(path, k, "%s%s%s%s", dir, dir[0] ? "/" : "", prefix, name);
	struct xent *e = plan_add(p, path, '0');
	return e ? 0 : -ENOMEM;
}

/* A directory whose entries are exactly what it shows (below an opaque
 * marker): all of them, lower-only ones too. */
static int plan_full(struct plan *p, struct node *d, const char *path, int depth)
{
	if (depth > 4096)
		return -ELOOP;
	struct name_list ns = { 0 };
	int res = ovl_dir_list(p->fs, d, name_list_add, &ns);
	for (size_t i = 0; res == 0 && i < ns.n; i++) {
		if (__atomic_load_n(p->stop, __ATOMIC_RELAXED)) {
			res = -ECANCELED;
			break;
		}
		struct node *c;
		struct stat st;
		res = ovl_lookup_name(p->fs, d, ns.v[i], false, &c, &st);
		if (res == -ENOENT) {
			res = 0;
			continue;
		}
		if (res < 0)
			break;
		char *cpath = path_join(path, ns.v[i]);
		res = cpath ? 0 : -ENOMEM;
		if (res == 0)
			res = plan_object(p, c, cpath ? strdup(cpath) : NULL);
		if (res == 0 && S_ISDIR(c->type))
			res = plan_full(p, c, cpath, depth + 1);
		free(cpath);
		node_put(p->fs, c);
	}
	name_list_free(&ns);
	return res;
}

/* Whether the lower layers show a directory name in dir. */
static bool lower_has_dir(struct ovl *fs, struct node *dir, const char *name)
{
	uint16_t found[dir->nlower ? dir->nlower : 1];
	uint16_t nfound;
	struct stat st;
	return lower_find(fs, dir, name, &st, found, &nfound) == 0 && S_ISDIR(st.st_mode);
}

/* 1 (stop) when directory d's upper copy has no xattr name. */
static int upper_lacks(const char *name, char *value, size_t size, void *arg)
{
	(void)value;
	(void)size;
	struct node *d = arg;
	pthread_mutex_lock(&d->lock);
	bool lacks = !upper_xattr_get(d->upper, name);
	pthread_mutex_unlock(&d->lock);
	return lacks;
}

/* Whether d's lower directory has an xattr its upper copy lost: applying
 * a layer only adds xattrs to a directory that is there, so such a
 * directory must be written whole, below an opaque marker. */
static bool dir_dropped_xattrs(struct ovl *fs, struct node *d)
{
	char path[PATH_MAX + 64];
	int fd;
	if (lower_xattr_path(fs, d, path, sizeof(path), &fd) < 0)
		return false;
	bool dropped = xattrs_each(path, false, upper_lacks, d) > 0;
	if (fd >= 0)
		close(fd);
	return dropped;
}

/* An upper directory that merges the lower ones at its place: its
 * whiteouts, then its upper entries. */
static int plan_delta(struct plan *p, struct node *d, const char *path, int depth)
{
	if (depth > 4096)
		return -ELOOP;
	struct upper *u = d->upper;
	int res = 0;
	dirmap_for_each(&u->dir, s) {
		if (!s->child && (res = plan_marker(p, path, WHITEOUT_PREFIX, s->name)) < 0)
			return res;
	}
	dirmap_for_each(&u->dir, s) {
		struct node *c = s->child;
		if (!c)
			continue;
		if (__atomic_load_n(p->stop, __ATOMIC_RELAXED))
			return -ECANCELED;
		char *cpath = path_join(path, s->name);
		if (!cpath)
			return -ENOMEM;
		bool isdir = S_ISDIR(c->type);
		bool merges = isdir && c->upper && c->nlower > 0 && !c->upper->opaque &&
			      c->lpath && strcmp(c->lpath, cpath) == 0 &&
			      !dir_dropped_xattrs(p->fs, c);
		/* A directory put where a lower one is (renamed there, made
		 * anew) is its own: applying a layer keeps a directory that
		 * is there, with its xattrs, and an opaque marker only clears
		 * its entries. A whiteout first takes the lower one away. */
		if (isdir && !merges && node_is_merged_dir(d) && lower_has_dir(p->fs, d, s->name))
			res = plan_marker(p, path, WHITEOUT_PREFIX, s->name);
		if (res == 0)
			res = plan_object(p, c, strdup(cpath));
		if (res == 0 && isdir) {
			if (merges) {
				res = plan_delta(p, c, cpath, depth + 1);
			} else {
				res = plan_marker(p, cpath, "", OPAQUE_NAME);
				if (res == 0)
					res = plan_full(p, c, cpath, depth + 1);
			}
		}
		free(cpath);
		if (res < 0)
			return res;
	}
	return 0;
}

/* ---- other lower names of copied-up hard links
 *
 * A lower file with several names keeps one inode after copy-up: every
 * name shows the new data. Only the names changed in the upper are in
 * its dirmaps; the others are still lower names. Applied on the lower
 * layers, the tar would leave those with the old data, so each one the
 * mount still shows as that inode is exported as a hard link to it. The
 * same for a lower file copied into the tar under a renamed directory
 * while another of its names stays where it was. They are found by one
 * walk of the layers concerned, only when such a file exists. */

/* Beside each target's struct lower_link, at the same index. */
struct link_target {
	size_t first;           /* its entry; SIZE_MAX: none yet */
	bool pinned;            /* found in the node table: pinned here */
};

struct links {
	struct plan *p;
	struct lower_link *l;
	struct link_target *t;
	size_t n;
};

static int links_add(struct links *ls, const struct lower_link *l, size_t first, bool pinned)
{
	struct lower_link *gl = realloc(ls->l, (ls->n + 1) * sizeof(*gl));
	if (!gl)
		return -ENOMEM;
	ls->l = gl;
	struct link_target *gt = realloc(ls->t, (ls->n + 1) * sizeof(*gt));
	if (!gt)
		return -ENOMEM;
	ls->t = gt;
	ls->l[ls->n] = *l;
	ls->t[ls->n++] = (struct link_target){ first, pinned };
	return 0;
}

static int pset_build(struct plan *p)
{
	size_t cap = 64;
	while (cap < 2 * p->n + 2)
		cap *= 2;
	p->pset = calloc(cap, sizeof(*p->pset));
	if (!p->pset)
		return -ENOMEM;
	p->pcap = cap;
	for (size_t i = 0; i < p->n; i++) {
		size_t j = (size_t)name_hash(p->e[i].path) & (cap - 1);
		while (p->pset[j])
			j = (j + 1) & (cap - 1);
		p->pset[j] = i + 1;
	}
	return 0;
}

/* Whether path is planned already (below an opaque marker, say: a
 * directory written whole shows its lower names at the same paths). */
static bool pset_has(const struct plan *p, const char *path)
{
	size_t j = (size_t)name_hash(path) & (p->pcap - 1);
	for (; p->pset[j]; j = (j + 1) & (p->pcap - 1))
		if (strcmp(p->e[p->pset[j] - 1].path, path) == 0)
			return true;
	return false;
}

/* The entry just planned joins the set. */
static int pset_add_last(struct plan *p)
{
	if (2 * p->n + 2 > p->pcap) {
		free(p->pset);
		return pset_build(p);
	}
	size_t j = (size_t)name_hash(p->e[p->n - 1].path) & (p->pcap - 1);
	while (p->pset[j])
		j = (j + 1) & (p->pcap - 1);
	p->pset[j] = p->n;
	return 0;
}

/* rel, a lower name of target i that the mount shows as it
 * (lower_links_walk): a hard link to the target's first entry, or that
 * first entry itself when no upper name has it (its names in the upper
 * are gone: renamed over, unlinked). */
static int plan_lower_name(void *arg, size_t i, const char *rel, struct node *dir,
			   const char *name)
{
	(void)dir;
	(void)name;
	struct links *ls = arg;
	struct plan *p = ls->p;
	struct link_target *t = &ls->t[i];
	struct node *n = ls->l[i].n;
	if (pset_has(p, rel))
		return 0;
	if (t->first != SIZE_MAX) {
		struct xent *e = plan_add(p, strdup(rel), '1');
		if (!e)
			return -ENOMEM;
		e->link = strdup(p->e[t->first].path);
		return e->link ? pset_add_last(p) : -ENOMEM;
	}
	struct xent *e = plan_add(p, strdup(rel), '0');
	if (!e)
		return -ENOMEM;
	t->first = p->n - 1;
	hold_file(p->fs, n);
	e->n = n;
	int res = copy_upper_meta(p->fs, n, e);
	return res < 0 ? res : pset_add_last(p);
}

static bool link_known(void *arg, const struct node *n)
{
	const struct links *ls = arg;
	for (size_t i = 0; i < ls->n; i++)
		if (ls->l[i].n == n)
			return true;
	return false;
}

static int plan_lower_links(struct plan *p)
{
	struct ovl *fs = p->fs;
	struct links ls = { .p = p };
	int res = 0;
	for (size_t i = 0; res == 0 && i < p->n; i++) {
		/* copied up with lower hard links (origin_pinned), or a
		 * lower-only file copied whole below an opaque marker */
		struct node *n = p->e[i].n;
		struct lower_link l;
		if (!n || n->nlower == 0 || p->e[i].st.st_nlink < 2 ||
		    (n->upper && !lower_links_wanted(n)) ||
		    lower_link_of(fs, n, &l) < 0)
			continue;
		res = links_add(&ls, &l, i, false);
	}
	/* copied-up files no upper name reaches any more: only their lower
	 * names (found by st_ino) show them */
	struct lower_link *more = NULL;
	size_t nmore = 0;
	if (res == 0)
		res = lower_links_copied_up(fs, link_known, &ls, &more, &nmore);
	size_t kept = 0;
	while (res == 0 && kept < nmore) {
		res = links_add(&ls, &more[kept], SIZE_MAX, true); /* its pin now */
		if (res == 0)
			kept++;
	}
	for (size_t k = kept; k < nmore; k++)
		node_put(fs, more[k].n);
	free(more);
	if (res == 0 && ls.n)
		res = pset_build(p);
	if (res == 0)
		res = lower_links_walk(fs, ls.l, ls.n, plan_lower_name, &ls);
	for (size_t i = 0; i < ls.n; i++)
		if (ls.t[i].pinned)
			node_put(fs, ls.l[i].n);
	free(ls.l);
	free(ls.t);
	return res;
}

/* ---- phase 2: writing */

static void fill_entry(const struct xent *e, const struct stat *st, struct tar_entry *t)
{
	memset(t, 0, sizeof(*t));
	t->path = e->path;
	t->type = e->type;
	t->mode = st->st_mode & 07777;
	t->uid = st->st_uid;
	t->gid = st->st_gid;
	t->mtime = st->st_mtim.tv_sec;
	t->mtime_nsec = st->st_mtim.tv_nsec;
	t->linkname = e->link;
	if (e->type == '3' || e->type == '4') {
		t->devmajor = major(st->st_rdev);
		t->devminor = minor(st->st_rdev);
	}
	t->xattrs = e->xattrs;
	t->nxattrs = e->nxattrs;
}

/* [off, off+len) of d into buf (lower_fd for what a lazy copy still
 * reads from the lower file). Caller serialises d. */
static int read_upper(struct filestore *fstore, const struct upper_data *d, int lower_fd,
		      uint64_t off, size_t len, char *buf)
{
	struct fuse_bufvec *bv;
	int res = upper_data_read(fstore, d, lower_fd, off, len, &bv);
	if (res < 0)
		return res;
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(len);
	dst.buf[0].mem = buf;
	ssize_t k = fuse_buf_copy(&dst, bv, 0);
	free(bv);
	if (k < 0)
		return (int)k;
	if ((size_t)k < len)
		memset(buf + k, 0, len - (size_t)k);
	return 0;
}

/* Data straight from a file that does not change (a lower file). */
static int stream_fd(struct tar_writer *tw, int fd, uint64_t size, char *buf)
{
	for (uint64_t off = 0; off < size;) {
		size_t want = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
		ssize_t k = pread(fd, buf, want, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0) { /* shorter than it said: the size stays, zeros fill */
			memset(buf, 0, want);
			k = (ssize_t)want;
		}
		int res = tar_data(tw, buf, (size_t)k);
		if (res < 0)
			return res;
		off += (uint64_t)k;
	}
	return 0;
}

/* A file copied aside: the store copy of its extents, and its cow map. */
struct aside {
	struct upper_data d;
};

static int set_aside(struct filestore *fstore, const struct upper_data *src, struct aside *a)
{
	upper_data_init(&a->d);
	a->d.up = true;
	int res = 0;
	if (upper_data_in_file(src)) {
		/* passthrough=upper: a copy of its file (holes stay holes) */
		int fd = upper_data_file_open(src, O_RDONLY);
		if (fd < 0)
			return fd;
		res = fdata_copy_from_fd(fstore, &a->d.store, fd, upper_data_size(src));
		close(fd);
		if (res < 0)
			return res;
	} else {
		const struct fdata *s = &src->store;
		for (size_t i = 0; i < s->n; i++) {
			ssize_t k = fdata_copy_range(fstore, &a->d.store, s->ext[i].off, s,
						     s->ext[i].off, (size_t)s->ext[i].len);
			if (k < 0) {
				fdata_release(fstore, &a->d.store);
				return (int)k;
			}
		}
		res = fdata_truncate(fstore, &a->d.store, s->size);
	}
	const struct cow_map *m = &src->cow;
	a->d.cow.lower_end = m->lower_end;
	if (res == 0 && m->n) {
		a->d.cow.up = malloc(m->n * sizeof(*m->up));
		if (!a->d.cow.up) {
			res = -ENOMEM;
		} else {
			memcpy(a->d.cow.up, m->up, m->n * sizeof(*m->up));
			a->d.cow.n = a->d.cow.cap = m->n;
		}
	}
	if (res < 0) {
		fdata_release(fstore, &a->d.store);
		cow_reset(&a->d.cow);
	}
	return res;
}

static int write_file(struct ovl *fs, struct tar_writer *tw, struct xent *e, char *buf)
{
	struct node *n = e->n;
	int lower_fd = -1, res = 0;
	if (n->nlower > 0) {
		lower_fd = ovl_open_lower(fs, n, 0, O_RDONLY);
		if (lower_fd < 0)
			lower_fd = -1; /* only an error if the data needs it */
	}
	struct stat st = e->st;
	struct tar_entry t;
	char *small = NULL;
	struct aside a;
	bool aside = false, streamed = false;

	pthread_mutex_lock(&n->lock);
	bool up = n->upper && upper_data_is_up(&n->upper->data);
	if (n->upper) {
		upper_sync_file(n->upper, NULL); /* what the kernel wrote itself */
		upper_stat_locked(fs, n, &st);
	}
	if (up) {
		const struct upper_data *d = &n->upper->data;
		uint64_t size = upper_data_size(d);
		st.st_size = (off_t)size;
		if (upper_data_reads_lower(d) && lower_fd < 0) {
			res = -EIO;
		} else if (size <= SMALL_FILE) {
			small = malloc(size ? size : 1);
			res = small ? read_upper(fs->store, d, lower_fd, 0, size, small) : -ENOMEM;
		} else {
			res = set_aside(fs->store, d, &a);
			aside = res == 0;
			if (res == -ENOSPC) {
				/* no room for a copy: stream it under the lock
				 * (writers of this one file wait for the client) */
				fill_entry(e, &st, &t);
				t.size = size;
				res = tar_header(tw, &t);
				for (uint64_t off = 0; res == 0 && off < size; off += CHUNK) {
					size_t k = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
					res = read_upper(fs->store, d, lower_fd, off, k, buf);
					if (res == 0)
						res = tar_data(tw, buf, k);
				}
				if (res == 0)
					res = tar_pad(tw, size);
				streamed = true;
			}
		}
	}
	pthread_mutex_unlock(&n->lock);

	if (res == 0 && !streamed) {
		fill_entry(e, &st, &t);
		t.size = (uint64_t)st.st_size;
		res = tar_header(tw, &t);
		if (res == 0 && small)
			res = tar_data(tw, small, t.size);
		else if (res == 0 && aside)
			for (uint64_t off = 0; res == 0 && off < t.size; off += CHUNK) {
				size_t k = t.size - off < CHUNK ? (size_t)(t.size - off) : CHUNK;
				res = read_upper(fs->store, &a.d, lower_fd, off, k, buf);
				if (res == 0)
					res = tar_data(tw, buf, k);
			}
		else if (res == 0 && !up && t.size)
			res = lower_fd >= 0 ? stream_fd(tw, lower_fd, t.size, buf) : -EIO;
		if (res == 0)
			res = tar_pad(tw, t.size);
	}
	if (aside) {
		fdata_release(fs->store, &a.d.store);
		cow_reset(&a.d.cow);
	}
	free(small);
	if (lower_fd >= 0)
		close(lower_fd);
	return res;
}

int export_tar(struct ovl *fs, tar_sink sink, void *arg, const bool *stop)
{
	struct plan p = { .fs = fs, .stop = stop };
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = plan_delta(&p, fs->root, "", 0);
	if (res == 0)
		res = plan_lower_links(&p);
	pthread_rwlock_unlock(&fs->ns_lock);

	struct tar_writer tw;
	char *buf = malloc(CHUNK);
	if (res == 0 && !buf)
		res = -ENOMEM;
	if (res == 0)
		res = tar_init(&tw, sink, arg);
	if (res < 0) {
		free(buf);
		plan_free(&p);
		return res;
	}
	for (size_t i = 0; res == 0 && i < p.n; i++) {
		struct xent *e = &p.e[i];
		if (__atomic_load_n(stop, __ATOMIC_RELAXED)) {
			res = -ECANCELED;
		} else if (e->n) {
			res = write_file(fs, &tw, e, buf);
			release_file(fs, e->n); /* as soon as done: the file may go */
			e->n = NULL;
		} else {
			struct tar_entry t;
			fill_entry(e, &e->st, &t);
			res = tar_header(&tw, &t);
		}
	}
	if (res == 0)
		res = tar_finish(&tw);
	tar_free(&tw);
	free(buf);
	plan_free(&p);
	return res;
}

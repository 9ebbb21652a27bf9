/* readdir.c: the merged directory listing.
 *
 * The first readdir of a handle takes a snapshot of the merged directory
 * (top layer first, each name once, whiteouts and markers dropped, "." and
 * ".." first) and serves it by index. An offset is an index into the
 * snapshot, so offsets stay valid under telldir/seekdir and concurrent
 * changes; a rewind to 0 takes a fresh snapshot, as getdents on a real
 * directory would. Not at opendir: when the kernel still holds the listing
 * (cache_readdir) it never asks, and walks like find cost one opendir per
 * directory, no more.
 */
#include "memoverlay.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dir_entry {
	char *name;
	uint64_t ino;
	unsigned char type;     /* DT_* */
};

struct dir_handle {
	struct handle_link link;        /* first: see dh_destroy */
	pthread_mutex_t lock;   /* taken before ns_lock: see the lock order in memoverlay.h */
	struct dir_entry *ents;
	size_t n, cap;
	bool listed;            /* a snapshot was taken */
	bool served;            /* something was read since the snapshot */
	struct ovl *fs;
};

static void dh_free(struct dir_handle *dh);

static void dh_destroy(struct ovl *fs, struct handle_link *l)
{
	(void)fs;
	dh_free((struct dir_handle *)l);
}

/* A string set for de-duplicating names while merging layers. */
struct name_set {
	const char **slots;
	size_t cap, used;
};

static int set_grow(struct name_set *s)
{
	size_t ncap = s->cap ? s->cap * 2 : 256;
	const char **slots = calloc(ncap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < s->cap; i++) {
		if (!s->slots[i])
			continue;
		size_t k = name_hash(s->slots[i]) & (ncap - 1);
		while (slots[k])
			k = (k + 1) & (ncap - 1);
		slots[k] = s->slots[i];
	}
	free(s->slots);
	s->slots = slots;
	s->cap = ncap;
	return 0;
}

static bool set_has(const struct name_set *s, const char *name)
{
	if (!s->cap)
		return false;
	for (size_t k = name_hash(name) & (s->cap - 1); s->slots[k]; k = (k + 1) & (s->cap - 1))
		if (strcmp(s->slots[k], name) == 0)
			return true;
	return false;
}

/* Adds name (borrowed, must outlive the set); 1 if added, 0 if present. */
static int set_add(struct name_set *s, const char *name)
{
	if ((s->used + 1) * 2 > s->cap && set_grow(s) < 0)
		return -ENOMEM;
	size_t k = name_hash(name) & (s->cap - 1);
	while (s->slots[k]) {
		if (strcmp(s->slots[k], name) == 0)
			return 0;
		k = (k + 1) & (s->cap - 1);
	}
	s->slots[k] = name;
	s->used++;
	return 1;
}

static int dh_push(struct dir_handle *dh, const char *name, uint64_t ino, unsigned char type)
{
	if (dh->n == dh->cap) {
		size_t ncap = dh->cap ? dh->cap * 2 : 64;
		struct dir_entry *e = realloc(dh->ents, ncap * sizeof(*e));
		if (!e)
			return -ENOMEM;
		dh->ents = e;
		dh->cap = ncap;
	}
	char *dup = strdup(name);
	if (!dup)
		return -ENOMEM;
	dh->ents[dh->n++] = (struct dir_entry){ .name = dup, .ino = ino, .type = type };
	return 0;
}

static void dh_clear(struct dir_handle *dh)
{
	for (size_t i = 0; i < dh->n; i++)
		free(dh->ents[i].name);
	dh->n = 0;
}

/* Whiteout targets seen so far; the set of seen names borrows these strings. */
struct hidden_names {
	char **v;
	size_t n, cap;
};

static const char *hidden_add(struct hidden_names *h, const char *name)
{
	if (h->n == h->cap) {
		size_t ncap = h->cap ? h->cap * 2 : 16;
		char **v = realloc(h->v, ncap * sizeof(*v));
		if (!v)
			return NULL;
		h->v = v;
		h->cap = ncap;
	}
	char *dup = strdup(name);
	if (dup)
		h->v[h->n++] = dup;
	return dup;
}

static int merge_layer(struct ovl *fs, struct node *dir, int pos, struct dir_handle *dh,
		       struct name_set *seen, struct hidden_names *hidden)
{
	int fd = ovl_open_lower(fs, dir, pos, O_RDONLY | O_DIRECTORY);
	if (fd < 0)
		return fd == -ENOENT || fd == -ENOTDIR ? 0 : fd;
	struct stat dst;
	if (fstat(fd, &dst) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = -errno;
		close(fd);
		return e;
	}
	int res = 0;
	size_t first_new = dh->n, first_hidden = hidden->n;
	struct dirent *de;
	while (res == 0 && (errno = 0, de = readdir(d)) != NULL) {
		const char *name = de->d_name;
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
			continue;
		if (layer_name_is_marker(name)) {
			/* ".wh.NAME" hides NAME below this layer (".wh..wh.*" are meta) */
			const char *target = layer_whiteout_target(name);
			if (target && !hidden_add(hidden, target))
				res = -ENOMEM;
			continue;
		}
		unsigned char type = de->d_type;
		if (type == DT_CHR || type == DT_UNKNOWN) {
			struct stat st;
			if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				continue; /* vanished meanwhile */
			if (layer_stat_is_whiteout(&st)) {
				if (!hidden_add(hidden, name))
					res = -ENOMEM;
				continue;
			}
			type = (unsigned char)IFTODT(st.st_mode);
		}
		/* This layer's own names join `seen` after the loop, so that a
		 * ".wh.x" listed after "x" in one layer cannot hide it. */
		if (set_has(seen, name))
			continue;
		res = dh_push(dh, name, ino_from_lower(fs, dst.st_dev, de->d_ino), type);
	}
	if (res == 0 && errno != 0 && de == NULL)
		res = -errno;
	closedir(d);
	/* Now this layer's names and whiteouts hide the same names further down. */
	for (size_t i = first_new; res == 0 && i < dh->n; i++)
		if (set_add(seen, dh->ents[i].name) < 0)
			res = -ENOMEM;
	for (size_t i = first_hidden; res == 0 && i < hidden->n; i++)
		if (set_add(seen, hidden->v[i]) < 0)
			res = -ENOMEM;
	return res;
}

static int snapshot(struct ovl *fs, struct node *dir, struct dir_handle *dh)
{
	struct name_set seen = { 0 };
	struct hidden_names hidden = { 0 };
	int res;

	dh_clear(dh);
	res = dh_push(dh, ".", dir->st_ino, DT_DIR);
	if (res == 0)
		res = dh_push(dh, "..", dir->parent_ino ? dir->parent_ino : dir->st_ino, DT_DIR);
	if (dir->upper) {
		dirmap_for_each(&dir->upper->dir, e) {
			if (res < 0)
				break;
			if (e->child)
				res = dh_push(dh, e->name, e->child->st_ino,
					      (unsigned char)IFTODT(e->child->type));
			else if (!hidden_add(&hidden, e->name))
				res = -ENOMEM;
		}
		for (size_t i = 2; res == 0 && i < dh->n; i++)
			if (set_add(&seen, dh->ents[i].name) < 0)
				res = -ENOMEM;
		for (size_t i = 0; res == 0 && i < hidden.n; i++)
			if (set_add(&seen, hidden.v[i]) < 0)
				res = -ENOMEM;
	}
	bool opaque = dir->upper && dir->upper->opaque;
	for (uint16_t i = 0; res == 0 && !opaque && i < dir->nlower; i++)
		res = merge_layer(fs, dir, i, dh, &seen, &hidden);
	free(seen.slots);
	for (size_t i = 0; i < hidden.n; i++)
		free(hidden.v[i]);
	free(hidden.v);
	dh->listed = true;
	dh->served = false;
	return res;
}

int name_list_add(const char *name, uint64_t ino, unsigned char type, void *list)
{
	(void)ino;
	(void)type;
	struct name_list *l = list;
	if (l->n == l->cap) {
		size_t c = l->cap ? 2 * l->cap : 64;
		char **g = realloc(l->v, c * sizeof(*g));
		if (!g)
			return -ENOMEM;
		l->v = g;
		l->cap = c;
	}
	if (!(l->v[l->n] = strdup(name)))
		return -ENOMEM;
	l->n++;
	return 0;
}

void name_list_free(struct name_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	*l = (struct name_list){ 0 };
}

int ovl_dir_list(struct ovl *fs, struct node *dir,
		 int (*each)(const char *name, uint64_t ino, unsigned char type, void *arg),
		 void *arg)
{
	struct dir_handle dh = { 0 };
	int res = snapshot(fs, dir, &dh);
	for (size_t i = 2; res == 0 && i < dh.n; i++)
		res = each(dh.ents[i].name, dh.ents[i].ino, dh.ents[i].type, arg);
	dh_clear(&dh);
	free(dh.ents);
	return res;
}

static int any_entry(const char *name, uint64_t ino, unsigned char type, void *arg)
{
	(void)name;
	(void)ino;
	(void)type;
	(void)arg;
	return -ENOTEMPTY;
}

int ovl_dir_is_empty(struct ovl *fs, struct node *dir)
{
	return ovl_dir_list(fs, dir, any_entry, NULL);
}

static void dh_free(struct dir_handle *dh)
{
	if (dh->fs)
		handles_remove(dh->fs, &dh->link);
	dh_clear(dh);
	free(dh->ents);
	pthread_mutex_destroy(&dh->lock);
	free(dh);
}

void ovl_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	struct node *dir = node_get_req(req, ino);
	if (!dir)
		return;
	struct dir_handle *dh = calloc(1, sizeof(*dh));
	int res = dh ? 0 : -ENOMEM;
	bool unchanged = false;
	if (dh) {
		dh->fs = fs;
		pthread_mutex_init(&dh->lock, NULL);
		pthread_rwlock_rdlock(&fs->ns_lock);
		unchanged = !dir->upper;
		pthread_rwlock_unlock(&fs->ns_lock);
	}
	node_put(fs, dir);
	if (res < 0) {
		if (dh)
			dh_free(dh);
		fuse_reply_err(req, -res);
		return;
	}
	handles_add(fs, &dh->link, dh_destroy);
	fi->fh = (uint64_t)(uintptr_t)dh;
	/* Exclusive access: the kernel may cache the listing. It may keep it
	 * for the next opendir only while the directory has never changed (no
	 * upper copy): a listing filled while a change raced with it could
	 * otherwise outlive the change. A changed directory is listed afresh
	 * at every opendir. */
	fi->cache_readdir = !fs->cfg.shared_access;
	fi->keep_cache = !fs->cfg.shared_access && unchanged;
	if (fuse_reply_open(req, fi) == -ENOENT)
		dh_free(dh); /* the opener was interrupted; no releasedir follows */
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct ovl *fs = ovl_of(req);
	struct dir_handle *dh = (struct dir_handle *)(uintptr_t)fi->fh;
	kernel_io_reply_for(&dh->link);
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	struct node *dir = node_get(fs, ino);
	if (!dir) {
		free(buf);
		fuse_reply_err(req, ENOENT);
		return;
	}

	pthread_mutex_lock(&dh->lock);
	int err = 0;
	if (!dh->listed || (off == 0 && dh->served)) {
		pthread_rwlock_rdlock(&fs->ns_lock);
		err = -snapshot(fs, dir, dh);
		pthread_rwlock_unlock(&fs->ns_lock);
	}
	size_t used = 0;
	for (size_t i = (size_t)off; err == 0 && i < dh->n; i++) {
		const struct dir_entry *e = &dh->ents[i];
		size_t len;
		if (!plus) {
			struct stat st = { .st_ino = e->ino, .st_mode = (mode_t)DTTOIF(e->type) };
			len = fuse_add_direntry(req, buf + used, size - used, e->name, &st, (off_t)(i + 1));
		} else {
			struct fuse_entry_param ep = { 0 };
			struct node *child = NULL;
			if (i < 2) {
				ep.attr.st_ino = e->ino;
				ep.attr.st_mode = (mode_t)DTTOIF(e->type);
			} else {
				pthread_rwlock_rdlock(&fs->ns_lock);
				int r = ovl_lookup_name(fs, dir, e->name, true, &child, &ep.attr);
				pthread_rwlock_unlock(&fs->ns_lock);
				if (r < 0)
					continue; /* gone since the snapshot */
				ovl_entry_fill(fs, child, &ep, false);
			}
			len = fuse_add_direntry_plus(req, buf + used, size - used, e->name, &ep, (off_t)(i + 1));
			if (len > size - used && child)
				node_forget(fs, child->ino, 1);
		}
		if (len > size - used)
			break;
		used += len;
	}
	dh->served = true;
	pthread_mutex_unlock(&dh->lock);
	node_put(fs, dir);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

void ovl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

void ovl_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

void ovl_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	kernel_io_last_request(&((struct dir_handle *)(uintptr_t)fi->fh)->link);
	dh_free((struct dir_handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

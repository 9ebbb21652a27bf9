/* upper.c: the in-memory upper layer — inode metadata (xattrs: upper_xattr.c) and
 * directory entries (children and whiteouts); the count of upper inodes
 * against nr_inodes, and giving back the data of a file nobody can reach
 * any more. File data is upper_data.c's. */
#include "memoverlay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>

char dirmap_tombstone[1];

struct upper *upper_new(const struct stat *st)
{
	struct upper *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->st = *st;
	u->wb_dirty = true;
	upper_data_init(&u->data);
	return u;
}

static void dirmap_free_names(struct dirmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].name && m->slots[i].name != DIRMAP_TOMBSTONE)
			free(m->slots[i].name);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

/* Children pins are the node table's business (see maybe_free_locked). */
void upper_free(struct ovl *fs, struct upper *u)
{
	if (!u)
		return;
	if (fs && fs->store)
		upper_data_release(fs->store, &u->data);
	upper_xattrs_free(u);
	free(u->symlink);
	dirmap_free_names(&u->dir);
	free(u);
}

int upper_inode_reserve(struct ovl *fs)
{
	uint64_t limit = fs->cfg.nr_inodes;
	uint64_t now = __atomic_add_fetch(&fs->upper_inodes, 1, __ATOMIC_RELAXED);
	if (limit && now > limit) {
		__atomic_sub_fetch(&fs->upper_inodes, 1, __ATOMIC_RELAXED);
		return -ENOSPC;
	}
	return 0;
}

void upper_inode_release(struct ovl *fs, struct upper *u)
{
	if (u && u->counted) {
		u->counted = false;
		__atomic_sub_fetch(&fs->upper_inodes, 1, __ATOMIC_RELAXED);
	}
}

void upper_drop_unreachable_data(struct ovl *fs, struct node *n)
{
	struct upper *u = n->upper;
	if (u && S_ISREG(n->type) && u->st.st_nlink == 0 && n->nopen == 0)
		upper_data_release(fs->store, &u->data);
}

/* The clock the kernel stamps files with (current_time(): the coarse
 * realtime clock), for the times it sets itself under the write cache:
 * with a finer clock here, a change stamped by the kernel could look older
 * than one stamped here before it. */
static struct timespec now_as_kernel(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	return now;
}

void upper_touch(struct upper *u, bool atime, bool mtime, bool ctime)
{
	struct timespec now = now_as_kernel();
	if (atime)
		u->st.st_atim = now;
	if (mtime)
		u->st.st_mtim = now;
	if (ctime)
		u->st.st_ctim = now;
	if (mtime || ctime)
		u->wb_dirty = u->shown_changed = true;
}

void upper_touch_names(struct upper *u)
{
	u->st.st_ctim = now_as_kernel();
	u->wb_dirty = true;
}

static bool ts_le(struct timespec a, struct timespec b)
{
	return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
}

void upper_use_files(struct ovl *fs, struct upper *u)
{
	if (fs->files)
		upper_data_use_files(&u->data, fs->files);
}

void upper_start_empty(struct ovl *fs, struct upper *u)
{
	upper_use_files(fs, u);
	if (upper_data_start_empty(fs->store, &u->data) == 0)
		return;
	/* no file to be had (no memory): the store takes it, as without
	 * passthrough=upper */
	upper_data_use_files(&u->data, NULL);
	upper_data_start_empty(fs->store, &u->data);
}

int upper_sync_file(struct upper *u, struct stat *seen)
{
	struct stat st;
	int res = upper_data_file_sync(&u->data, &st);
	int out = res >= 0 && upper_data_in_file(&u->data) ? UPPER_SYNC_SEEN : 0;
	if (out && seen)
		*seen = st;
	if (res <= 0)
		return out;
	/* written by the kernel through a backing file: a change of data, as
	 * a WRITE would have made it (upper_touch's marks); the times are
	 * the kernel's own */
	u->st.st_size = st.st_size;
	u->st.st_mtim = st.st_mtim;
	if (!ts_le(st.st_ctim, u->st.st_ctim))
		u->st.st_ctim = st.st_ctim;
	u->wb_dirty = u->shown_changed = true;
	if (!u->kill_on_write)
		return out | UPPER_SYNC_DATA;
	/* what the kernel's write would have cleared on a file of its own */
	u->kill_on_write = false;
	killpriv_kernel_write(u);
	return out | UPPER_SYNC_DATA | UPPER_SYNC_KILLED;
}

bool upper_accessed(struct upper *u, enum atime_mode mode)
{
	if (mode == ATIME_NOATIME)
		return false;
	struct timespec now = now_as_kernel();
	/* relatime: only when atime is not newer than mtime/ctime, or a day old */
	if (mode == ATIME_RELATIME && !ts_le(u->st.st_atim, u->st.st_mtim) &&
	    !ts_le(u->st.st_atim, u->st.st_ctim) && now.tv_sec - u->st.st_atim.tv_sec < 24 * 3600)
		return false;
	u->st.st_atim = now;
	return true;
}

/* ---- dirmap: open addressing with tombstones, string keys ---- */

static struct dirmap_slot *slot_find(const struct dirmap *m, const char *name)
{
	if (!m->cap)
		return NULL;
	for (size_t k = name_hash(name) & (m->cap - 1);; k = (k + 1) & (m->cap - 1)) {
		struct dirmap_slot *s = &m->slots[k];
		if (!s->name)
			return NULL;
		if (s->name != DIRMAP_TOMBSTONE && strcmp(s->name, name) == 0)
			return s;
	}
}

static int dirmap_rehash(struct dirmap *m, size_t ncap)
{
	struct dirmap_slot *slots = calloc(ncap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		struct dirmap_slot *s = &m->slots[i];
		if (!s->name || s->name == DIRMAP_TOMBSTONE)
			continue;
		size_t k = name_hash(s->name) & (ncap - 1);
		while (slots[k].name)
			k = (k + 1) & (ncap - 1);
		slots[k] = *s;
	}
	free(m->slots);
	m->slots = slots;
	m->cap = ncap;
	m->used = m->live;
	return 0;
}

bool dirmap_get(const struct dirmap *m, const char *name, struct node **child)
{
	const struct dirmap_slot *s = slot_find(m, name);
	if (!s)
		return false;
	*child = s->child;
	return true;
}

int dirmap_set(struct ovl *fs, struct dirmap *m, const char *name, struct node *child)
{
	struct dirmap_slot *s = slot_find(m, name);
	if (child)
		node_pin(fs, child);
	if (s) {
		struct node *old = s->child;
		s->child = child;
		if (old)
			node_put(fs, old);
		return 0;
	}
	/* Keep the table at most half full (tombstones count), shrink when sparse. */
	if ((m->used + 1) * 2 > m->cap) {
		size_t ncap = m->cap ? m->cap : 8;
		while ((m->live + 1) * 4 > ncap) /* rehash also drops tombstones */
			ncap *= 2;
		if (dirmap_rehash(m, ncap) < 0)
			goto nomem;
	}
	char *dup = strdup(name);
	if (!dup)
		goto nomem;
	size_t k = name_hash(name) & (m->cap - 1);
	while (m->slots[k].name && m->slots[k].name != DIRMAP_TOMBSTONE)
		k = (k + 1) & (m->cap - 1);
	if (!m->slots[k].name)
		m->used++;
	m->slots[k] = (struct dirmap_slot){ .name = dup, .child = child };
	m->live++;
	return 0;
nomem:
	if (child)
		node_put(fs, child);
	return -ENOMEM;
}

void dirmap_remove(struct ovl *fs, struct dirmap *m, const char *name)
{
	struct dirmap_slot *s = slot_find(m, name);
	if (!s)
		return;
	struct node *old = s->child;
	free(s->name);
	s->name = DIRMAP_TOMBSTONE;
	s->child = NULL;
	m->live--;
	if (m->live == 0) {
		free(m->slots);
		memset(m, 0, sizeof(*m));
	} else if (m->cap > 64 && m->live * 8 < m->cap) {
		dirmap_rehash(m, m->cap / 4); /* on failure the map just stays big */
	}
	if (old)
		node_put(fs, old);
}

void dirmap_clear(struct ovl *fs, struct dirmap *m)
{
	struct dirmap copy = *m;
	memset(m, 0, sizeof(*m));
	for (size_t i = 0; i < copy.cap; i++) {
		struct dirmap_slot *s = &copy.slots[i];
		if (!s->name || s->name == DIRMAP_TOMBSTONE)
			continue;
		free(s->name);
		if (s->child)
			node_put(fs, s->child);
	}
	free(copy.slots);
}

/* node.c: the node table and inode numbering.
 *
 * A node is keyed by its FUSE nodeid, which is also its st_ino (the root is
 * nodeid 1 and shows its lower root's number). Lower objects get a number
 * composed from their device and inode, so a name looked up twice, seen in
 * readdir, or reached through another hard link gets the same node and the
 * same st_ino for the life of the mount, without remembering anything.
 * node_is_merged_dir: whether a directory node merges lower directories.
 */
#include "memoverlay.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#define INO_BITS 48
#define INO_MASK ((UINT64_C(1) << INO_BITS) - 1)
#define MAX_DEVS ((1u << 15) - 1)
#define MIN_BUCKETS (1u << 16)

/* Lower inode numbers that do not fit in INO_BITS get a remembered number. */
struct big_ino {
	dev_t dev;
	ino_t ino;
	uint64_t st_ino;
	struct big_ino *next;
};

int node_table_init(struct ovl *fs)
{
	fs->nbuckets = MIN_BUCKETS;
	fs->buckets = calloc(fs->nbuckets, sizeof(*fs->buckets));
	if (!fs->buckets)
		return -ENOMEM;
	pthread_mutex_init(&fs->table_lock, NULL);
	pthread_mutex_init(&fs->ino_lock, NULL);
	fs->next_upper_ino = 2;
	return 0;
}

void node_table_destroy(struct ovl *fs)
{
	for (size_t i = 0; i < fs->nbuckets; i++) {
		struct node *n = fs->buckets[i];
		while (n) {
			struct node *next = n->hash_next;
			if (n != fs->root)
				node_free(fs, n);
			n = next;
		}
	}
	free(fs->buckets);
	fs->buckets = NULL;
	while (fs->big) {
		struct big_ino *b = fs->big;
		fs->big = b->next;
		free(b);
	}
	free(fs->devs);
	fs->devs = NULL;
	pthread_mutex_destroy(&fs->table_lock);
	pthread_mutex_destroy(&fs->ino_lock);
}

static size_t bucket_of(const struct ovl *fs, fuse_ino_t ino)
{
	uint64_t h = ino * UINT64_C(0x9E3779B97F4A7C15);
	return (size_t)(h >> 32) & (fs->nbuckets - 1);
}

static struct node *table_find(struct ovl *fs, fuse_ino_t ino)
{
	for (struct node *n = fs->buckets[bucket_of(fs, ino)]; n; n = n->hash_next)
		if (n->ino == ino)
			return n;
	return NULL;
}

static void table_resize(struct ovl *fs, size_t nb)
{
	struct node **b = calloc(nb, sizeof(*b));
	if (!b)
		return; /* longer chains or a bigger table: still correct */
	struct node **old = fs->buckets;
	size_t oldn = fs->nbuckets;
	fs->buckets = b;
	fs->nbuckets = nb;
	for (size_t i = 0; i < oldn; i++) {
		struct node *n = old[i];
		while (n) {
			struct node *next = n->hash_next;
			size_t k = bucket_of(fs, n->ino);
			n->hash_next = b[k];
			b[k] = n;
			n = next;
		}
	}
	free(old);
}

static void table_remove(struct ovl *fs, struct node *victim)
{
	struct node **pp = &fs->buckets[bucket_of(fs, victim->ino)];
	while (*pp && *pp != victim)
		pp = &(*pp)->hash_next;
	if (*pp) {
		*pp = victim->hash_next;
		fs->nnodes--;
	}
	/* Give the memory back after a burst of files is gone again. */
	if (fs->nbuckets > MIN_BUCKETS && fs->nnodes < fs->nbuckets / 8)
		table_resize(fs, fs->nbuckets / 2);
}

struct node *node_new(mode_t type, const char *lpath, const uint16_t *lower, uint16_t nlower)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->type = type & S_IFMT;
	if (lpath) {
		n->lpath = strdup(lpath);
		n->lower = malloc(sizeof(*lower) * (nlower ? nlower : 1));
		if (!n->lpath || !n->lower) {
			node_free(NULL, n);
			return NULL;
		}
		memcpy(n->lower, lower, sizeof(*lower) * nlower);
		n->nlower = nlower;
	}
	pthread_mutex_init(&n->lock, NULL);
	return n;
}

/* Releases what the node owns; pins it holds on others are dropped by the caller. */
void node_free(struct ovl *fs, struct node *n)
{
	if (!n)
		return;
	if (n->upper) {
		upper_inode_release(fs, n->upper);
		upper_free(fs, n->upper);
	}
	free(n->name);
	free(n->lpath);
	free(n->lower);
	pthread_mutex_destroy(&n->lock);
	free(n);
}

bool node_is_merged_dir(const struct node *n)
{
	if (!S_ISDIR(n->type))
		return false;
	if (n->upper)
		return n->nlower > 0 && !n->upper->opaque;
	return n->nlower > 1;
}

struct node *node_insert_or_get(struct ovl *fs, struct node *fresh, bool lookup)
{
	pthread_mutex_lock(&fs->table_lock);
	struct node *n = table_find(fs, fresh->ino);
	if (n) {
		node_free(fs, fresh);
	} else {
		n = fresh;
		if (n->parent)
			n->parent->pins++;
		if (fs->nnodes > fs->nbuckets)
			table_resize(fs, fs->nbuckets * 2);
		size_t k = bucket_of(fs, n->ino);
		n->hash_next = fs->buckets[k];
		fs->buckets[k] = n;
		fs->nnodes++;
	}
	if (lookup)
		n->nlookup++;
	else
		n->pins++;
	pthread_mutex_unlock(&fs->table_lock);
	return n;
}

struct node *node_get_req(fuse_req_t req, fuse_ino_t ino)
{
	struct node *n = node_get(ovl_of(req), ino);
	if (!n)
		fuse_reply_err(req, ENOENT);
	return n;
}

struct node *node_get(struct ovl *fs, fuse_ino_t ino)
{
	pthread_mutex_lock(&fs->table_lock);
	struct node *n = ino == FUSE_ROOT_ID ? fs->root : table_find(fs, ino);
	if (n)
		n->pins++;
	pthread_mutex_unlock(&fs->table_lock);
	return n;
}

/* Neither the kernel (lookups) nor the daemon (pins) holds it; the root is
 * held by the mount. Caller holds table_lock. */
static bool unreferenced(const struct ovl *fs, const struct node *n)
{
	return n->nlookup == 0 && n->pins == 0 && n != fs->root;
}

/* Frees n if nothing refers to it, then whatever only n kept alive: its
 * parent and the children its upper directory names. Iterative, so that
 * dropping a deep tree cannot overflow the stack. */
static void maybe_free_locked(struct ovl *fs, struct node *n)
{
	struct node **work = NULL;
	size_t nwork = 0, cap = 0;

	if (!unreferenced(fs, n))
		return;
	for (;;) {
		table_remove(fs, n);
		struct node *drop[2] = { n->parent, NULL };
		n->parent = NULL;
		if (n->upper && S_ISDIR(n->type)) {
			dirmap_for_each(&n->upper->dir, s) {
				if (!s->child)
					continue;
				struct node *c = s->child;
				s->child = NULL;
				if (--c->pins == 0 && unreferenced(fs, c)) {
					if (nwork == cap) {
						size_t ncap = cap ? cap * 2 : 16;
						struct node **w = realloc(work, ncap * sizeof(*w));
						if (!w) {
							c->pins++; /* keep it rather than lose track */
							continue;
						}
						work = w;
						cap = ncap;
					}
					work[nwork++] = c;
				}
			}
		}
		node_free(fs, n);
		fs->freed_since_trim++;
		if (drop[0] && --drop[0]->pins == 0 && unreferenced(fs, drop[0])) {
			n = drop[0];
			continue;
		}
		if (nwork == 0)
			break;
		n = work[--nwork];
	}
	free(work);
}

void node_ref(struct ovl *fs, struct node *n, bool lookup)
{
	pthread_mutex_lock(&fs->table_lock);
	if (lookup)
		n->nlookup++;
	else
		n->pins++;
	pthread_mutex_unlock(&fs->table_lock);
}

void node_unref(struct ovl *fs, struct node *n, bool lookup)
{
	if (lookup)
		node_forget(fs, n->ino, 1);
	else
		node_put(fs, n);
}

/* Freed nodes and upper copies are many small blocks spread over malloc's
 * arenas; after a burst of deletions, hand the pages back to the system. */
void node_trim_memory(struct ovl *fs)
{
	pthread_mutex_lock(&fs->table_lock);
	bool trim = fs->freed_since_trim > 4096;
	if (trim)
		fs->freed_since_trim = 0;
	pthread_mutex_unlock(&fs->table_lock);
	if (trim)
		malloc_trim(0);
}

void node_pin(struct ovl *fs, struct node *n)
{
	pthread_mutex_lock(&fs->table_lock);
	n->pins++;
	pthread_mutex_unlock(&fs->table_lock);
}

int node_set_parent(struct ovl *fs, struct node *n, struct node *parent, const char *name)
{
	char *dup = strdup(name);
	if (!dup)
		return -ENOMEM;
	pthread_mutex_lock(&fs->table_lock);
	struct node *old = n->parent;
	parent->pins++;
	n->parent = parent;
	free(n->name);
	n->name = dup;
	n->parent_ino = parent->st_ino;
	if (old) {
		old->pins--;
		maybe_free_locked(fs, old);
	}
	pthread_mutex_unlock(&fs->table_lock);
	return 0;
}

void node_put(struct ovl *fs, struct node *n)
{
	pthread_mutex_lock(&fs->table_lock);
	n->pins--;
	maybe_free_locked(fs, n);
	pthread_mutex_unlock(&fs->table_lock);
}

void node_forget(struct ovl *fs, fuse_ino_t ino, uint64_t nlookup)
{
	pthread_mutex_lock(&fs->table_lock);
	struct node *n = ino == FUSE_ROOT_ID ? fs->root : table_find(fs, ino);
	if (n) {
		n->nlookup = nlookup > n->nlookup ? 0 : n->nlookup - nlookup;
		maybe_free_locked(fs, n);
	}
	pthread_mutex_unlock(&fs->table_lock);
}

/* Index of dev among the devices seen so far (layers, and mounts inside them). */
static long dev_index_locked(struct ovl *fs, dev_t dev)
{
	for (size_t i = 0; i < fs->ndevs; i++)
		if (fs->devs[i] == dev)
			return (long)i;
	if (fs->ndevs >= MAX_DEVS)
		return -1;
	dev_t *grown = realloc(fs->devs, sizeof(*grown) * (fs->ndevs + 1));
	if (!grown)
		return -1;
	fs->devs = grown;
	fs->devs[fs->ndevs] = dev;
	return (long)fs->ndevs++;
}

uint64_t ino_from_lower(struct ovl *fs, dev_t dev, ino_t ino)
{
	pthread_mutex_lock(&fs->ino_lock);
	long idx = dev_index_locked(fs, dev);
	uint64_t st_ino;
	if (idx >= 0 && ((uint64_t)ino & ~INO_MASK) == 0) {
		st_ino = ((uint64_t)(idx + 1) << INO_BITS) | (uint64_t)ino;
	} else {
		struct big_ino *b;
		for (b = fs->big; b; b = b->next)
			if (b->dev == dev && b->ino == ino)
				break;
		if (!b && (b = malloc(sizeof(*b)))) {
			b->dev = dev;
			b->ino = ino;
			b->st_ino = fs->next_upper_ino++;
			b->next = fs->big;
			fs->big = b;
		}
		st_ino = b ? b->st_ino : fs->next_upper_ino++;
	}
	pthread_mutex_unlock(&fs->ino_lock);
	return st_ino;
}

uint64_t ino_alloc_upper(struct ovl *fs)
{
	pthread_mutex_lock(&fs->ino_lock);
	uint64_t v = fs->next_upper_ino++;
	pthread_mutex_unlock(&fs->ino_lock);
	return v;
}

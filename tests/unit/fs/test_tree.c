/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests (TAP) for the parts of the daemon that make the merged tree,
 * without mounting: the node table (node.c), an upper directory's entries
 * (dirmap, upper.c), the lower layers' answer for a name (lower_find,
 * namei.c) and the merged listing (ovl_dir_list, readdir.c). Three real
 * layers in a temporary directory, set up the way main.c sets up a mount. */
#include "memoverlay.h"

#include "tap.h"
#include "tmptree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static char tmp[] = "/tmp/memoverlay-test-tree-XXXXXX";

static void make(const char *rel, mode_t mode, dev_t dev)
{
	tmptree_make(tmp, rel, mode, dev);
}

/* top, mid, bottom: what each layer holds (top first). */
static void make_layers(void)
{
	static const char *const dirs[] = { "top", "mid", "bottom", "mnt" };
	for (size_t i = 0; i < 4; i++)
		make(dirs[i], S_IFDIR | 0755, 0);
	make("top/only_top", S_IFREG | 0644, 0);
	make("top/shadow", S_IFREG | 0644, 0);       /* a file over a directory below */
	make("mid/shadow", S_IFDIR | 0755, 0);
	make("top/merged", S_IFDIR | 0755, 0);       /* merges through all three */
	make("mid/merged", S_IFDIR | 0755, 0);
	make("bottom/merged", S_IFDIR | 0755, 0);
	make("top/merged/a", S_IFREG | 0644, 0);
	make("mid/merged/b", S_IFREG | 0644, 0);
	make("bottom/merged/a", S_IFREG | 0644, 0);  /* hidden by top's a */
	make("bottom/merged/c", S_IFREG | 0644, 0);
	make("top/stopped", S_IFDIR | 0755, 0);      /* opaque in mid: bottom not merged */
	make("mid/stopped", S_IFDIR | 0755, 0);
	make("mid/stopped/.wh..wh..opq", S_IFREG | 0600, 0);
	make("mid/stopped/m", S_IFREG | 0644, 0);
	make("bottom/stopped", S_IFDIR | 0755, 0);
	make("bottom/stopped/never", S_IFREG | 0644, 0);
	make("top/gone", S_IFCHR | 0600, makedev(0, 0));   /* kernel whiteout */
	make("bottom/gone", S_IFREG | 0644, 0);
	make("mid/.wh.erased", S_IFREG | 0600, 0);          /* aufs/OCI whiteout */
	make("bottom/erased", S_IFREG | 0644, 0);
	make("bottom/only_bottom", S_IFREG | 0644, 0);
	make("bottom/dir_below_file", S_IFDIR | 0755, 0);
	make("mid/dir_below_file", S_IFREG | 0644, 0);
}

/* As main.c sets up a mount: the options parsed (the layers resolved and
 * opened there), the node table, the layers, the store and the root. */
static int setup(struct ovl *fs)
{
	char mnt[sizeof(tmp) + 8], lowerdir[3 * sizeof(tmp) + 64];
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmp);
	snprintf(lowerdir, sizeof(lowerdir), "lowerdir=%s/top:%s/mid:%s/bottom", tmp, tmp, tmp);
	char *argv[] = { "memoverlay", mnt, "-o", lowerdir, NULL };
	memset(fs, 0, sizeof(*fs));
	if (config_parse(&fs->cfg, 4, argv) != 0)
		return -1;
	pthread_rwlock_init(&fs->ns_lock, NULL);
	pthread_mutex_init(&fs->handles_lock, NULL);
	char err[256];
	if (node_table_init(fs) < 0 || open_layers(fs) < 0 ||
	    filestore_create(&fs->store, NULL, 0, err, sizeof(err)) < 0 || make_root(fs) < 0)
		return -1;
	return 0;
}

static void teardown(struct ovl *fs)
{
	node_table_destroy(fs);   /* as main.c ends a mount */
	node_free(fs, fs->root);
	close_layers(fs);
	filestore_destroy(fs->store);
	config_free(&fs->cfg);
	pthread_rwlock_destroy(&fs->ns_lock);
	pthread_mutex_destroy(&fs->handles_lock);
}

static void test_lower_find(struct ovl *fs)
{
	struct stat top;
	uint16_t found[3], n;
	is_int(lower_find(fs, fs->root, "only_top", &top, found, &n), 0, "a name in the top layer");
	ok(n == 1 && found[0] == 0 && S_ISREG(top.st_mode), "... from layer 0, a file");
	is_int(lower_find(fs, fs->root, "only_bottom", &top, found, &n), 0, "a name only at the bottom");
	ok(n == 1 && found[0] == 2, "... from layer 2");
	is_int(lower_find(fs, fs->root, "shadow", &top, found, &n), 0, "a file over a directory");
	ok(n == 1 && found[0] == 0 && S_ISREG(top.st_mode), "... is the file alone");
	is_int(lower_find(fs, fs->root, "merged", &top, found, &n), 0, "a directory in all three");
	ok(n == 3 && found[0] == 0 && found[1] == 1 && found[2] == 2, "... merges all three");
	is_int(lower_find(fs, fs->root, "stopped", &top, found, &n), 0, "opaque in the middle");
	ok(n == 2 && found[1] == 1, "... merges down to the opaque one, not below");
	is_int(lower_find(fs, fs->root, "gone", &top, found, &n), -ENOENT, "a char 0/0 whiteout hides");
	is_int(lower_find(fs, fs->root, "erased", &top, found, &n), -ENOENT, "a .wh. whiteout hides");
	is_int(lower_find(fs, fs->root, "dir_below_file", &top, found, &n), 0,
	       "a directory below a file");
	ok(n == 1 && found[0] == 1 && S_ISREG(top.st_mode), "... is hidden by the file");
	is_int(lower_find(fs, fs->root, "nothing", &top, found, &n), -ENOENT, "absent everywhere");
}

struct listing {
	char names[64][NAME_MAX + 1];
	int n;
};

static int collect(const char *name, uint64_t ino, unsigned char type, void *arg)
{
	(void)ino;
	(void)type;
	struct listing *l = arg;
	if (l->n == 64)
		return -ENOSPC;
	snprintf(l->names[l->n++], NAME_MAX + 1, "%s", name);
	return 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* The listing, sorted and joined with spaces. */
static const char *listed(struct ovl *fs, struct node *dir)
{
	static char out[64 * (NAME_MAX + 2)];
	struct listing l = { .n = 0 };
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = ovl_dir_list(fs, dir, collect, &l);
	pthread_rwlock_unlock(&fs->ns_lock);
	if (res < 0)
		return strerror(-res);
	qsort(l.names, (size_t)l.n, sizeof(l.names[0]), by_name);
	out[0] = '\0';
	for (int i = 0; i < l.n; i++) {
		strcat(out, i ? " " : "");
		strcat(out, l.names[i]);
	}
	return out;
}

static struct node *lookup(struct ovl *fs, struct node *dir, const char *name)
{
	struct node *n = NULL;
	struct stat st;
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = ovl_lookup_name(fs, dir, name, false, &n, &st);
	pthread_rwlock_unlock(&fs->ns_lock);
	return res == 0 ? n : NULL;
}

static void test_listing(struct ovl *fs)
{
	is_str(listed(fs, fs->root), "dir_below_file merged only_bottom only_top shadow stopped",
	       "the root merges three layers: whiteouts, markers and hidden names gone");
	struct node *merged = lookup(fs, fs->root, "merged");
	ok(merged && merged->nlower == 3, "lookup of a merged directory keeps its three layers");
	if (merged) {
		is_str(listed(fs, merged), "a b c", "its listing: each name once");
		node_put(fs, merged);
	}
	struct node *stopped = lookup(fs, fs->root, "stopped");
	if (stopped) {
		is_str(listed(fs, stopped), "m", "an opaque layer ends the merge");
		node_put(fs, stopped);
	}
	/* an upper whiteout (a dirmap entry with no child) hides a lower name */
	pthread_rwlock_wrlock(&fs->ns_lock);
	int res = dirmap_set(fs, &fs->root->upper->dir, "only_bottom", NULL);
	pthread_rwlock_unlock(&fs->ns_lock);
	is_int(res, 0, "an upper whiteout is set");
	is_str(listed(fs, fs->root), "dir_below_file merged only_top shadow stopped",
	       "... and hides the lower name");
	ok(lookup(fs, fs->root, "only_bottom") == NULL, "... from lookups too");
	ok(lookup(fs, fs->root, ".wh.erased") == NULL && lookup(fs, fs->root, ".wh..wh..opq") == NULL,
	   "markers cannot be looked up");
	pthread_rwlock_wrlock(&fs->ns_lock);
	dirmap_remove(fs, &fs->root->upper->dir, "only_bottom");
	pthread_rwlock_unlock(&fs->ns_lock);
	is_str(listed(fs, fs->root), "dir_below_file merged only_bottom only_top shadow stopped",
	       "removing it shows the lower name again");
}

static void test_dirmap(struct ovl *fs)
{
	struct node *child = lookup(fs, fs->root, "only_top");
	ok(child != NULL, "a node to name");
	if (!child)
		return;
	uint32_t pins = child->pins;
	struct dirmap m = { 0 };
	char name[32];
	int res = 0;
	pthread_rwlock_wrlock(&fs->ns_lock);
	for (int i = 0; i < 1000 && res == 0; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		res = dirmap_set(fs, &m, name, i % 2 ? child : NULL);
	}
	pthread_rwlock_unlock(&fs->ns_lock);
	is_int(res, 0, "1000 names set (half of them whiteouts)");
	ok(m.live == 1000, "... all live");
	is_int(child->pins - pins, 500, "... each name of a child pins it once");
	struct node *got = (struct node *)1;
	ok(dirmap_get(&m, "n7", &got) && got == child, "a name finds its child");
	ok(dirmap_get(&m, "n8", &got) && got == NULL, "a whiteout is found as NULL");
	ok(!dirmap_get(&m, "n1000", &got), "an unknown name is absent");
	pthread_rwlock_wrlock(&fs->ns_lock);
	for (int i = 0; i < 1000; i += 3) {
		snprintf(name, sizeof(name), "n%d", i);
		dirmap_remove(fs, &m, name);
	}
	res = dirmap_set(fs, &m, "n7", NULL); /* a child's name becomes a whiteout */
	pthread_rwlock_unlock(&fs->ns_lock);
	size_t live = 0;
	dirmap_for_each(&m, s)
		live++;
	ok(res == 0 && live == m.live && m.live == 1000 - 334, "removals leave %zu live", m.live);
	ok(dirmap_get(&m, "n7", &got) && got == NULL, "a name set again is replaced");
	ok(!dirmap_get(&m, "n3", &got) && dirmap_get(&m, "n5", &got),
	   "removed names are gone, others found past the tombstones");
	pthread_rwlock_wrlock(&fs->ns_lock);
	dirmap_clear(fs, &m);
	pthread_rwlock_unlock(&fs->ns_lock);
	is_int(child->pins, pins, "clearing the map drops every pin it took");
	node_put(fs, child);
}

static void test_node_table(struct ovl *fs)
{
	struct node *root = node_get(fs, FUSE_ROOT_ID);
	ok(root == fs->root, "nodeid 1 is the root");
	node_put(fs, root);
	size_t before = fs->nnodes;
	struct stat st;
	struct node *n = NULL;
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = ovl_lookup_name(fs, fs->root, "only_top", true, &n, &st);
	struct node *again = NULL;
	int res2 = ovl_lookup_name(fs, fs->root, "only_top", true, &again, &st);
	pthread_rwlock_unlock(&fs->ns_lock);
	ok(res == 0 && res2 == 0 && n == again, "two lookups of one name: one node");
	ok(n && n->nlookup == 2, "... holding two lookups");
	ok(fs->nnodes == before + 1, "... one more node in the table");
	if (!n)
		return;
	fuse_ino_t ino = n->ino;
	uint64_t st_ino = n->st_ino;
	struct node *other = NULL;
	pthread_rwlock_rdlock(&fs->ns_lock);
	res = ovl_lookup_name(fs, fs->root, "only_bottom", true, &other, &st);
	pthread_rwlock_unlock(&fs->ns_lock);
	ok(res == 0 && other->st_ino != st_ino, "another name: another inode number");
	node_forget(fs, ino, 1);
	ok(node_get(fs, ino) == n, "one lookup left: still in the table");
	node_put(fs, n);
	node_forget(fs, ino, 1);
	ok(node_get(fs, ino) == NULL, "all lookups forgotten: gone");
	ok(fs->nnodes == before + 1, "... the table holds only the other one");
	node_forget(fs, other->ino, 1);
	ok(fs->nnodes == before, "... and then none");
	pthread_rwlock_rdlock(&fs->ns_lock);
	res = ovl_lookup_name(fs, fs->root, "only_top", true, &n, &st);
	pthread_rwlock_unlock(&fs->ns_lock);
	ok(res == 0 && n->st_ino == st_ino, "looked up again: the same inode number");
	node_forget(fs, n->ino, 1);
}

int main(void)
{
	if (!mkdtemp(tmp)) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	make_layers();
	struct ovl fs;
	if (setup(&fs) < 0) {
		printf("Bail out! could not set up the layers in %s\n", tmp);
		return 1;
	}
	test_lower_find(&fs);
	test_listing(&fs);
	test_dirmap(&fs);
	test_node_table(&fs);
	teardown(&fs);
	tmptree_remove(tmp);
	return tap_done();
}

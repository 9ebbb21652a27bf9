/* SPDX-License-Identifier: Apache-2.0 */
/* lower_links.c: the other lower names of copied-up hard links, found by
 * one walk of a layer (lower_links.h). Only regular files with more than
 * one link are looked at, and only those whose st_dev/st_ino is one of
 * the targets are looked up in the merged view: a walk costs a readdir of
 * each directory of the layer and a stat of each file. */
#include "memoverlay.h"
#include "lower_links.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lower_link_of(struct ovl *fs, struct node *n, struct lower_link *l)
{
	if (n->upper && n->upper->origin_pinned) {
		/* where copy-up found it: a write-back moves the origin */
		const struct upper *u = n->upper;
		*l = (struct lower_link){ u->origin_dev, u->origin_ino, u->origin_layer, n };
		return 0;
	}
	if (n->nlower == 0)
		return -ENOENT;
	int fd = ovl_open_lower(fs, n, 0, O_PATH);
	if (fd < 0)
		return fd;
	struct stat st;
	int res = fstat(fd, &st) < 0 ? -errno : 0;
	close(fd);
	if (res == 0)
		*l = (struct lower_link){ st.st_dev, st.st_ino, n->lower[0], n };
	return res;
}

bool lower_links_wanted(struct node *n)
{
	pthread_mutex_lock(&n->lock);
	bool want = n->upper && n->upper->origin_pinned && n->upper->shown_changed;
	pthread_mutex_unlock(&n->lock);
	return want;
}

int lower_links_copied_up(struct ovl *fs, bool (*skip)(void *arg, const struct node *n),
			  void *arg, struct lower_link **out, size_t *nout)
{
	fuse_ino_t *inos = NULL;
	size_t nino = 0, cino = 0;
	int res = 0;
	pthread_mutex_lock(&fs->table_lock);
	for (size_t b = 0; res == 0 && b < fs->nbuckets; b++) {
		for (struct node *n = fs->buckets[b]; n; n = n->hash_next) {
			/* origin_pinned changes under ns_lock, held */
			if (!S_ISREG(n->type) || !n->upper || !n->upper->origin_pinned)
				continue;
			if (nino == cino) {
				size_t c = cino ? 2 * cino : 16;
				fuse_ino_t *g = realloc(inos, c * sizeof(*g));
				if (!g) {
					res = -ENOMEM;
					break;
				}
				inos = g;
				cino = c;
			}
			inos[nino++] = n->ino;
		}
	}
	pthread_mutex_unlock(&fs->table_lock);
	struct lower_link *l = NULL;
	size_t nl = 0;
	for (size_t k = 0; res == 0 && k < nino; k++) {
		/* pinned by node_get: kept as the entry's pin */
		struct node *n = node_get(fs, inos[k]);
		if (!n)
			continue;
		struct lower_link one;
		if (!lower_links_wanted(n) || (skip && skip(arg, n)) ||
		    lower_link_of(fs, n, &one) < 0) {
			node_put(fs, n);
			continue;
		}
		struct lower_link *g = realloc(l, (nl + 1) * sizeof(*g));
		if (!g) {
			node_put(fs, n);
			res = -ENOMEM;
			break;
		}
		l = g;
		l[nl++] = one;
	}
	free(inos);
	if (res < 0) {
		lower_links_put(fs, l, nl);
		l = NULL;
		nl = 0;
	}
	*out = l;
	*nout = nl;
	return res;
}

void lower_links_put(struct ovl *fs, struct lower_link *l, size_t n)
{
	for (size_t i = 0; i < n; i++)
		node_put(fs, l[i].n);
	free(l);
}

/* The merged directory holding path (pinned), and its last component in
 * *name (pointing into path), or NULL where the mount shows no directory. */
static struct node *resolve_parent(struct ovl *fs, const char *path, const char **name)
{
	char buf[PATH_MAX];
	const char *slash = strrchr(path, '/');
	*name = slash ? slash + 1 : path;
	size_t len = slash ? (size_t)(slash - path) : 0;
	if (len >= sizeof(buf))
		return NULL;
	memcpy(buf, path, len);
	buf[len] = '\0';
	struct node *cur = fs->root;
	node_ref(fs, cur, false);
	for (char *save = NULL, *c = strtok_r(buf, "/", &save); c && cur;
	     c = strtok_r(NULL, "/", &save)) {
		struct node *next;
		struct stat st;
		if (ovl_lookup_name(fs, cur, c, false, &next, &st) < 0)
			next = NULL;
		node_put(fs, cur);
		cur = next;
	}
	if (cur && !S_ISDIR(cur->type)) {
		node_put(fs, cur);
		cur = NULL;
	}
	return cur;
}

/* Whether the mount shows path as n through a lower name: then found(). */
static int offer(struct ovl *fs, const char *path, struct node *n, size_t i,
		 int (*found)(void *, size_t, const char *, struct node *, const char *),
		 void *arg)
{
	const char *name;
	struct node *dir = resolve_parent(fs, path, &name);
	if (!dir)
		return 0;
	struct node *shown = NULL, *ignored;
	struct stat st;
	bool upper_name = dir->upper && dirmap_get(&dir->upper->dir, name, &ignored);
	int res = 0;
	if (!upper_name && ovl_lookup_name(fs, dir, name, false, &shown, &st) == 0) {
		if (shown == n)
			res = found(arg, i, path, dir, name);
		node_put(fs, shown);
	}
	node_put(fs, dir);
	return res;
}

static int walk_layer(struct ovl *fs, uint16_t layer, const struct lower_link *t, size_t nt,
		      int (*found)(void *, size_t, const char *, struct node *, const char *),
		      void *arg)
{
	struct name_list todo = { 0 };
	int res = name_list_add("", 0, 0, &todo);
	while (res == 0 && todo.n) {
		char *dir = todo.v[--todo.n];
		int fd = layer_open(&fs->layers[layer], dir, O_RDONLY | O_DIRECTORY);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		if (!d && fd >= 0)
			close(fd);
		for (struct dirent *de; d && res == 0 && (de = readdir(d));) {
			const char *name = de->d_name;
			if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
			    layer_name_is_marker(name))
				continue;
			if (de->d_type != DT_DIR && de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
				continue;
			char *rel = path_join(dir, name);
			if (!rel) {
				res = -ENOMEM;
				break;
			}
			struct stat st;
			bool is_dir = de->d_type == DT_DIR, known = false;
			if (!is_dir && fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
				known = true;
				is_dir = S_ISDIR(st.st_mode);
			}
			if (is_dir) {
				res = name_list_add(rel, 0, 0, &todo);
			} else if (known && S_ISREG(st.st_mode) && st.st_nlink > 1) {
				for (size_t i = 0; res == 0 && i < nt; i++)
					if (t[i].layer == layer && t[i].dev == st.st_dev &&
					    t[i].ino == st.st_ino)
						res = offer(fs, rel, t[i].n, i, found, arg);
			}
			free(rel);
		}
		if (d)
			closedir(d);
		free(dir);
	}
	name_list_free(&todo);
	return res;
}

int lower_links_walk(struct ovl *fs, const struct lower_link *t, size_t nt,
		     int (*found)(void *arg, size_t i, const char *path, struct node *dir,
				  const char *name),
		     void *arg)
{
	int res = 0;
	for (size_t i = 0; res == 0 && i < nt; i++) {
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = t[j].layer == t[i].layer;
		if (!seen)
			res = walk_layer(fs, t[i].layer, t, nt, found, arg);
	}
	return res;
}

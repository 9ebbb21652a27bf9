/* namei.c: looking a name up across the layers.
 *
 * Top layer first. The first layer that has the name decides its type; a
 * whiteout there means the name does not exist. A directory keeps merging
 * with same-named directories further down until one is opaque, or a
 * non-directory or whiteout below ends the stack.
 *
 * Here: the LOOKUP op (ovl_lookup), the lookup that other ops and
 * readdirplus share (ovl_lookup_name), the lower layers' answer alone
 * (lower_find), and the entry reply (ovl_entry_fill).
 */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lower_find(struct ovl *fs, const struct node *dir, const char *name,
	       struct stat *top, uint16_t *found, uint16_t *nfound)
{
	*nfound = 0;
	if (dir->upper && dir->upper->opaque)
		return -ENOENT;
	for (uint16_t i = 0; i < dir->nlower; i++) {
		int dfd = ovl_open_lower(fs, dir, i, O_PATH | O_DIRECTORY);
		if (dfd < 0)
			continue; /* this layer's directory vanished; others still count */
		struct stat cur;
		enum lower_kind kind = layer_probe(dfd, name, &cur);
		if (kind == LOWER_FOUND && dir->lower[i] == UPPERDIR_LAYER && fs->wb) {
			char path[PATH_MAX + 64];
			snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dfd, name);
			upperdir_override_stat(fs, UPPERDIR_LAYER, path, false, &cur);
		}
		bool stop = false;
		if (kind == LOWER_WHITEOUT) {
			stop = true;
		} else if (kind == LOWER_FOUND) {
			if (*nfound == 0) {
				*top = cur;
				found[(*nfound)++] = dir->lower[i];
				stop = !S_ISDIR(cur.st_mode);
			} else if (S_ISDIR(cur.st_mode)) {
				found[(*nfound)++] = dir->lower[i];
			} else {
				stop = true; /* a file below a directory is hidden by it */
			}
			if (!stop && layer_dir_is_opaque(dfd, name))
				stop = true;
		}
		close(dfd);
		if (stop)
			break;
	}
	return *nfound ? 0 : -ENOENT;
}

int ovl_lookup_name(struct ovl *fs, struct node *dir, const char *name,
		    bool lookup, struct node **out, struct stat *st)
{
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (layer_name_is_marker(name) || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -ENOENT;
	if (!S_ISDIR(dir->type))
		return -ENOTDIR;

	struct node *n;
	if (dir->upper && dirmap_get(&dir->upper->dir, name, &n)) {
		if (!n)
			return -ENOENT; /* whiteout */
		int res = ovl_getattr_node(fs, n, st);
		if (res < 0)
			return res;
		node_ref(fs, n, lookup);
		*out = n;
		return 0;
	}

	uint16_t found[dir->nlower ? dir->nlower : 1];
	uint16_t nfound;
	struct stat top;
	int res = lower_find(fs, dir, name, &top, found, &nfound);
	if (res < 0)
		return res;

	char *lpath = path_join(dir->lpath, name);
	if (!lpath)
		return -ENOMEM;
	struct node *fresh = node_new(top.st_mode, lpath, found, nfound);
	free(lpath);
	if (!fresh)
		return -ENOMEM;
	fresh->st_ino = ino_from_lower(fs, top.st_dev, top.st_ino);
	fresh->ino = fresh->st_ino;
	fresh->parent_ino = dir->st_ino;
	fresh->parent = dir; /* pinned by node_insert_or_get if fresh is used */
	fresh->name = strdup(name);
	if (!fresh->name) {
		fresh->parent = NULL;
		node_free(fs, fresh);
		return -ENOMEM;
	}

	n = node_insert_or_get(fs, fresh, lookup);
	if (n->upper) {
		/* a hard link of a copied-up file: the upper copy is the truth */
		res = ovl_getattr_node(fs, n, st);
		if (res < 0) {
			node_unref(fs, n, lookup);
			return res;
		}
	} else {
		*st = top;
		st->st_ino = n->st_ino;
		ovl_fix_dir_nlink(n, st);
		idmap_show(&fs->cfg, st, true);
	}
	*out = n;
	return 0;
}

void ovl_entry_fill(struct ovl *fs, struct node *n, struct fuse_entry_param *e, bool getattr)
{
	if (getattr) {
		memset(e, 0, sizeof(*e));
		ovl_getattr_node(fs, n, &e->attr);
	}
	e->ino = n->ino;
	e->attr_timeout = fs->cfg.attr_timeout;
	e->entry_timeout = fs->cfg.entry_timeout;
}

void ovl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ovl *fs = ovl_of(req);
	struct node *dir = node_get_req(req, parent);
	if (!dir)
		return;
	struct fuse_entry_param e;
	struct node *n;
	memset(&e, 0, sizeof(e));
	pthread_rwlock_rdlock(&fs->ns_lock);
	int res = ovl_lookup_name(fs, dir, name, true, &n, &e.attr);
	pthread_rwlock_unlock(&fs->ns_lock);
	node_put(fs, dir);
	if (res == -ENOENT) {
		/* A negative entry: the kernel may cache that the name is absent. */
		e.ino = 0;
		e.entry_timeout = fs->cfg.entry_timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (res < 0) {
		fuse_reply_err(req, -res);
		return;
	}
	ovl_entry_fill(fs, n, &e, false);
	if (fuse_reply_entry(req, &e) == -ENOENT)
		node_forget(fs, n->ino, 1);
}

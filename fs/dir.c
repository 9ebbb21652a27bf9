/* dir.c: changes to the namespace — create, mknod, mkdir, symlink, link,
 * unlink, rmdir, rename — all landing in the upper layer. A removed name
 * that a lower layer still has becomes a whiteout in its upper directory. */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

/* Does a lower layer show `name` in dir (ignoring dir's upper entries)? */
static bool lower_has(struct ovl *fs, const struct node *dir, const char *name)
{
	uint16_t found[dir->nlower ? dir->nlower : 1];
	uint16_t nfound;
	struct stat st;
	return lower_find(fs, dir, name, &st, found, &nfound) == 0;
}

static int check_name(const char *name)
{
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (layer_name_is_marker(name))
		return -EINVAL; /* would be taken for a whiteout by other overlay tools */
	return 0;
}

/* Looks name up for a change: a pinned node, or NULL when absent. */
static int find_existing(struct ovl *fs, struct node *dir, const char *name, struct node **out)
{
	struct stat st;
	int res = ovl_lookup_name(fs, dir, name, false, out, &st);
	if (res == -ENOENT) {
		*out = NULL;
		return 0;
	}
	return res;
}

static void dir_changed(struct node *dir, int nlink_delta)
{
	pthread_mutex_lock(&dir->lock);
	upper_touch(dir->upper, false, true, true);
	dir->upper->st.st_nlink = (nlink_t)((long)dir->upper->st.st_nlink + nlink_delta);
	pthread_mutex_unlock(&dir->lock);
}

void ovl_dir_listing_changed(struct ovl *fs, struct node *dir)
{
	/* With exclusive access the kernel keeps directory listings across
	 * opens (see ovl_opendir); drop this one. Called without ns_lock: the
	 * kernel may be waiting on a READDIR of ours while it invalidates. */
	if (!fs->cfg.shared_access && fs->se)
		fuse_lowlevel_notify_inval_inode(fs->se, dir->ino, 0, 0);
}

static void reply_entry_for(fuse_req_t req, struct ovl *fs, struct node *n)
{
	struct fuse_entry_param e;
	ovl_entry_fill(fs, n, &e, true);
	if (fuse_reply_entry(req, &e) == -ENOENT)
		node_forget(fs, n->ino, 1);
}

/* Creates a new upper-only object `name` in dir; returns it with one lookup.
 * Caller holds ns_lock for writing. */
int upper_create(struct ovl *fs, fuse_req_t req, struct node *dir, const char *name,
		 mode_t mode, dev_t rdev, const char *link, struct node **out)
{
	int res = check_name(name);
	if (res < 0)
		return res;
	struct node *old;
	res = find_existing(fs, dir, name, &old);
	if (res < 0)
		return res;
	if (old) {
		node_put(fs, old);
		return -EEXIST;
	}
	res = copy_up_meta(fs, dir);
	if (res < 0)
		return res;
	res = upper_inode_reserve(fs);
	if (res < 0)
		return res;

	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat st;
	memset(&st, 0, sizeof(st));
	st.st_mode = mode;
	st.st_uid = ctx->uid;
	st.st_gid = ctx->gid;
	if (dir->upper->st.st_mode & S_ISGID) {
		/* BSD group semantics for setgid directories, as every Linux fs */
		st.st_gid = dir->upper->st.st_gid;
		if (S_ISDIR(mode))
			st.st_mode |= S_ISGID;
	}
	st.st_nlink = S_ISDIR(mode) ? 2 : 1;
	st.st_rdev = rdev;
	st.st_blksize = FILESTORE_BLOCK;
	st.st_size = link ? (off_t)strlen(link) : S_ISDIR(mode) ? 4096 : 0;

	struct node *n = node_new(mode, NULL, NULL, 0);
	struct upper *u = upper_new(&st);
	char *nm = strdup(name);
	char *target = link ? strdup(link) : NULL;
	if (!n || !u || !nm || (link && !target)) {
		node_free(fs, n);
		upper_free(fs, u);
		free(nm);
		free(target);
		__atomic_sub_fetch(&fs->upper_inodes, 1, __ATOMIC_RELAXED);
		return -ENOMEM;
	}
	/* FUSE_CAP_DONT_MASK: the umask is ours to apply, unless a default ACL
	 * of the directory takes its place. */
	if (!S_ISLNK(mode)) {
		mode_t m = u->st.st_mode;
		if (upper_xattr_get(dir->upper, ACL_DEFAULT_XATTR))
			res = acl_inherit(dir->upper, u, &m);
		else
			m &= ~(mode_t)ctx->umask;
		u->st.st_mode = m;
		if (res < 0) {
			node_free(fs, n);
			upper_free(fs, u);
			free(nm);
			free(target);
			__atomic_sub_fetch(&fs->upper_inodes, 1, __ATOMIC_RELAXED);
			return res;
		}
	}
	upper_touch(u, true, true, true);
	u->counted = true;
	u->symlink = target;
	if (S_ISREG(mode))
		upper_start_empty(fs, u);
	n->upper = u;
	n->st_ino = ino_alloc_upper(fs);
	n->upper->st.st_ino = n->st_ino;
	n->ino = n->st_ino;
	n->parent = dir;
	n->parent_ino = dir->st_ino;
	n->name = nm;
	n = node_insert_or_get(fs, n, true);

	res = dirmap_set(fs, &dir->upper->dir, name, n);
	if (res < 0) {
		node_forget(fs, n->ino, 1);
		return res;
	}
	dir_changed(dir, S_ISDIR(mode) ? 1 : 0);
	*out = n;
	return 0;
}

static void do_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      dev_t rdev, const char *link)
{
	struct ovl *fs = ovl_of(req);
	struct node *dir = node_get_req(req, parent);
	if (!dir)
		return;
	struct node *n;
	pthread_rwlock_wrlock(&fs->ns_lock);
	int res = upper_create(fs, req, dir, name, mode, rdev, link, &n);
	pthread_rwlock_unlock(&fs->ns_lock);
	if (res == 0)
		ovl_dir_listing_changed(fs, dir);
	node_put(fs, dir);
	if (res < 0)
		fuse_reply_err(req, -res);
	else
		reply_entry_for(req, fs, n);
}

void ovl_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	if (!S_ISREG(mode) && !S_ISFIFO(mode) && !S_ISSOCK(mode) && !S_ISCHR(mode) && !S_ISBLK(mode)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	do_create(req, parent, name, mode, (S_ISCHR(mode) || S_ISBLK(mode)) ? rdev : 0, NULL);
}

void ovl_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	do_create(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL);
}

void ovl_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	do_create(req, parent, name, S_IFLNK | 0777, 0, link);
}

void ovl_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct ovl *fs = ovl_of(req);
	struct node *n = node_get(fs, ino);
	struct node *dir = node_get(fs, newparent);
	int res = (!n || !dir) ? -ENOENT : check_name(newname);
	struct node *old = NULL;

	pthread_rwlock_wrlock(&fs->ns_lock);
	if (res == 0 && S_ISDIR(n->type))
		res = -EPERM;
	if (res == 0)
		res = find_existing(fs, dir, newname, &old);
	if (res == 0 && old)
		res = -EEXIST;
	if (res == 0)
		res = copy_up_meta(fs, n);
	if (res == 0)
		res = copy_up_meta(fs, dir);
	if (res == 0)
		res = dirmap_set(fs, &dir->upper->dir, newname, n);
	if (res == 0) {
		pthread_mutex_lock(&n->lock);
		n->upper->st.st_nlink++;
		upper_touch_names(n->upper);
		pthread_mutex_unlock(&n->lock);
		dir_changed(dir, 0);
		node_ref(fs, n, true);
	}
	pthread_rwlock_unlock(&fs->ns_lock);
	if (res == 0)
		ovl_dir_listing_changed(fs, dir);
	if (old)
		node_put(fs, old);
	if (res < 0)
		fuse_reply_err(req, -res);
	else
		reply_entry_for(req, fs, n);
	if (n)
		node_put(fs, n);
	if (dir)
		node_put(fs, dir);
}

/* A lower file with other hard links keeps its own link count from now on
 * (as kernel overlayfs does with index=on): its other names must see one
 * link fewer. */
static bool lower_hardlinked(struct ovl *fs, struct node *n)
{
	if (n->upper || S_ISDIR(n->type))
		return false;
	struct stat st;
	return ovl_getattr_node(fs, n, &st) == 0 && st.st_nlink > 1;
}

/* n is renamed, or renamed over: its upper copy, named only by the entry
 * the rename gives it. A lower hard link's other names, the one the mount
 * found first too, are left to show it from below (copy_up_meta_unnamed). */
static int copy_up_moved(struct ovl *fs, struct node *n)
{
	return lower_hardlinked(fs, n) ? copy_up_meta_unnamed(fs, n) : copy_up_meta(fs, n);
}

/* child loses one of its names (unlink, rmdir, or renamed over; the
 * caller sees to the entry): one link fewer, and with the last one what
 * only a name kept — its place against nr_inodes, its data (unless open),
 * the pin copy-up took for its other lower hard links. The one place for
 * this, for unlink, rmdir and rename alike. Caller holds ns_lock for
 * writing and a pin on child. */
static void drop_link(struct ovl *fs, struct node *child)
{
	if (child->upper) {
		pthread_mutex_lock(&child->lock);
		struct upper *u = child->upper;
		if (S_ISDIR(child->type))
			u->st.st_nlink = 0; /* its name and its "." go together */
		else if (u->st.st_nlink > 0)
			u->st.st_nlink--;
		upper_touch_names(u);
		bool last = S_ISDIR(child->type) || u->st.st_nlink == 0;
		if (last) {
			upper_inode_release(fs, u);
			upper_drop_unreachable_data(fs, child);
		}
		bool unpin = u->origin_pinned && last;
		if (unpin)
			u->origin_pinned = false;
		pthread_mutex_unlock(&child->lock);
		if (unpin)
			node_put(fs, child);
	} else {
		/* still open or looked up: fstat must show it has no name left */
		pthread_mutex_lock(&child->lock);
		child->lower_unlinked = true;
		pthread_mutex_unlock(&child->lock);
	}
}

/* Takes `name` (naming child) out of dir: a whiteout if a lower layer
 * would show the name again, else nothing. Drops one link of child. */
static int remove_name(struct ovl *fs, struct node *dir, const char *name, struct node *child)
{
	int res = copy_up_meta(fs, dir);
	if (res == 0 && lower_hardlinked(fs, child))
		res = copy_up_meta_unnamed(fs, child);
	if (res < 0)
		return res;
	if (lower_has(fs, dir, name))
		res = dirmap_set(fs, &dir->upper->dir, name, NULL);
	else
		dirmap_remove(fs, &dir->upper->dir, name);
	if (res < 0)
		return res;
	drop_link(fs, child);
	dir_changed(dir, S_ISDIR(child->type) ? -1 : 0);
	return 0;
}

static void do_remove(fuse_req_t req, fuse_ino_t parent, const char *name, bool want_dir)
{
	struct ovl *fs = ovl_of(req);
	struct node *dir = node_get_req(req, parent);
	if (!dir)
		return;
	struct node *child = NULL;
	pthread_rwlock_wrlock(&fs->ns_lock);
	int res = find_existing(fs, dir, name, &child);
	if (res == 0 && !child)
		res = -ENOENT;
	if (res == 0 && want_dir && !S_ISDIR(child->type))
		res = -ENOTDIR;
	if (res == 0 && !want_dir && S_ISDIR(child->type))
		res = -EISDIR;
	if (res == 0 && want_dir)
		res = ovl_dir_is_empty(fs, child);
	if (res == 0)
		res = remove_name(fs, dir, name, child);
	pthread_rwlock_unlock(&fs->ns_lock);
	if (res == 0)
		ovl_dir_listing_changed(fs, dir);
	if (child)
		node_put(fs, child);
	node_put(fs, dir);
	fuse_reply_err(req, -res);
}

void ovl_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_remove(req, parent, name, false);
}

void ovl_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_remove(req, parent, name, true);
}

/* Puts node n under (dir, name), replacing whatever entry is there. */
static int set_entry(struct ovl *fs, struct node *dir, const char *name, struct node *n)
{
	int res = dirmap_set(fs, &dir->upper->dir, name, n);
	if (res == 0)
		res = node_set_parent(fs, n, dir, name);
	return res;
}

static int do_rename(struct ovl *fs, struct node *p1, const char *n1, struct node *p2,
		     const char *n2, unsigned flags, struct node **src_out, struct node **dst_out)
{
	struct node *src = NULL, *dst = NULL;
	int res = check_name(n2);
	if (res == 0)
		res = find_existing(fs, p1, n1, &src);
	if (res == 0 && !src)
		res = -ENOENT;
	if (res == 0)
		res = find_existing(fs, p2, n2, &dst);
	*src_out = src;
	*dst_out = dst;
	if (res < 0)
		return res;
	if (src == dst)
		return 0; /* two names of one inode: rename(2) does nothing */
	if ((flags & RENAME_NOREPLACE) && dst)
		return -EEXIST;
	if ((flags & RENAME_EXCHANGE) && !dst)
		return -ENOENT;
	if (dst && !(flags & RENAME_EXCHANGE)) {
		if (S_ISDIR(src->type) && !S_ISDIR(dst->type))
			return -ENOTDIR;
		if (!S_ISDIR(src->type) && S_ISDIR(dst->type))
			return -EISDIR;
		if (S_ISDIR(dst->type) && (res = ovl_dir_is_empty(fs, dst)) < 0)
			return res;
	}
	/* Everything involved gets its upper copy first, so nothing below can
	 * fail half-way for want of memory in a fresh copy-up. */
	if ((res = copy_up_moved(fs, src)) < 0 || (res = copy_up_meta(fs, p1)) < 0 ||
	    (res = copy_up_meta(fs, p2)) < 0)
		return res;
	if (dst && (res = copy_up_moved(fs, dst)) < 0)
		return res;

	if (flags & RENAME_EXCHANGE) {
		if ((res = set_entry(fs, p2, n2, src)) < 0 || (res = set_entry(fs, p1, n1, dst)) < 0)
			return res;
		if (S_ISDIR(src->type) != S_ISDIR(dst->type) && p1 != p2) {
			int d = S_ISDIR(src->type) ? 1 : -1;
			dir_changed(p2, d);
			dir_changed(p1, -d);
		} else {
			dir_changed(p1, 0);
			dir_changed(p2, 0);
		}
		return 0;
	}
	if (dst) {
		/* dst loses its name as unlink or rmdir would take it; its entry
		 * goes to src below, in place (nothing to allocate) */
		drop_link(fs, dst);
		if (S_ISDIR(dst->type))
			dir_changed(p2, -1);
	}
	node_pin(fs, src); /* keep src alive between the two map changes */
	if (lower_has(fs, p1, n1))
		res = dirmap_set(fs, &p1->upper->dir, n1, NULL);
	else
		dirmap_remove(fs, &p1->upper->dir, n1);
	if (res == 0)
		res = set_entry(fs, p2, n2, src);
	node_put(fs, src);
	if (res < 0)
		return res;
	pthread_mutex_lock(&src->lock);
	upper_touch_names(src->upper);
	pthread_mutex_unlock(&src->lock);
	int d = S_ISDIR(src->type) ? 1 : 0;
	dir_changed(p1, -d);
	dir_changed(p2, d);
	return 0;
}

void ovl_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		const char *newname, unsigned int flags)
{
	struct ovl *fs = ovl_of(req);
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		fuse_reply_err(req, EINVAL); /* RENAME_WHITEOUT is the kernel's own business */
		return;
	}
	struct node *p1 = node_get(fs, parent);
	struct node *p2 = node_get(fs, newparent);
	struct node *src = NULL, *dst = NULL;
	int res = (!p1 || !p2) ? -ENOENT : 0;
	pthread_rwlock_wrlock(&fs->ns_lock);
	if (res == 0)
		res = do_rename(fs, p1, name, p2, newname, flags, &src, &dst);
	pthread_rwlock_unlock(&fs->ns_lock);
	if (res == 0) {
		ovl_dir_listing_changed(fs, p1);
		if (p2 != p1)
			ovl_dir_listing_changed(fs, p2);
	}
	if (src)
		node_put(fs, src);
	if (dst)
		node_put(fs, dst);
	if (p1)
		node_put(fs, p1);
	if (p2)
		node_put(fs, p2);
	fuse_reply_err(req, -res);
}

/* copy_up.c: giving a lower object its upper copy, on its first change.
 *
 * Metadata first (mode, owner, times, xattrs, symlink target), parents
 * before children, so every upper node is named by an upper directory.
 * Data only when a file is opened for writing or truncated, and then lazily
 * (see cow.h): only what is written goes into the filestore; the rest is
 * still read from the lower file. Where the lower layers are shared (they
 * may change under us) the whole file is copied at once, in the kernel.
 * The node keeps its st_ino, so nothing a user holds changes identity.
 */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

static int set_upper_xattr(const char *name, char *value, size_t size, void *arg)
{
	int res = upper_xattr_set(arg, name, value, size, 0);
	free(value);
	return res;
}

static int copy_xattrs(struct ovl *fs, const struct node *n, struct upper *u)
{
	char path[PATH_MAX + 64];
	int fd;
	int res = lower_xattr_path(fs, n, path, sizeof(path), &fd);
	if (res < 0)
		return res == -ENODATA ? 0 : res;
	res = xattrs_each(path, true, set_upper_xattr, u);
	if (fd >= 0)
		close(fd);
	return res;
}

static int lower_stat(struct ovl *fs, const struct node *n, struct stat *st)
{
	int res = ovl_stat_lower(fs, n, st);
	if (res == 0)
		idmap_map_lower(&fs->cfg, st);
	return res;
}

static int read_symlink(struct ovl *fs, const struct node *n, char **out)
{
	char buf[PATH_MAX + 1];
	int res = ovl_read_lower_link(fs, n, buf, sizeof(buf));
	if (res < 0)
		return res;
	*out = strdup(buf);
	return *out ? 0 : -ENOMEM;
}

static int copy_up(struct ovl *fs, struct node *n, bool named)
{
	if (n->upper)
		return 0;
	if (!n->parent || !n->name)
		return -EIO; /* only the root has no parent, and it is always up */
	/* its parent for its name; one copied up unnamed needs none */
	int res = named ? copy_up_meta(fs, n->parent) : 0;
	if (res < 0)
		return res;

	struct stat st;
	res = lower_stat(fs, n, &st);
	if (res < 0)
		return res;
	dev_t origin_dev = st.st_dev;
	ino_t origin_ino = st.st_ino;
	st.st_ino = n->st_ino;
	if (n->lower_unlinked) /* ns_lock held: stable */
		st.st_nlink = 0;
	struct upper *u = upper_new(&st);
	if (!u)
		return -ENOMEM;
	res = copy_xattrs(fs, n, u);
	if (res == 0 && S_ISLNK(st.st_mode))
		res = read_symlink(fs, n, &u->symlink);
	if (res == 0 && st.st_nlink)
		res = upper_inode_reserve(fs);
	if (res < 0) {
		upper_free(fs, u);
		return res;
	}
	u->counted = st.st_nlink != 0; /* a nameless file takes no inode, as in tmpfs */
	pthread_mutex_lock(&n->lock);
	n->upper = u;
	pthread_mutex_unlock(&n->lock);
	stats_copyup(&fs->stats, COPYUP_META);
	/* An unlinked (or renamed-over) lower object that is still open or
	 * looked up gets its upper copy, but no name: its old name is a
	 * whiteout or someone else's now, and must stay so. Nor does a lower
	 * hard link copied up only to count its names (!named). */
	struct node *there;
	if (named && !dirmap_get(&n->parent->upper->dir, n->name, &there)) {
		res = dirmap_set(fs, &n->parent->upper->dir, n->name, n);
		if (res < 0)
			return res; /* n keeps its upper copy; it is just not named */
	}
	/* Other lower names of this inode find it through the node table
	 * (same st_ino); keep it alive for them while it has links. */
	if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
		u->origin_pinned = true;
		u->origin_dev = origin_dev;
		u->origin_ino = origin_ino;
		u->origin_layer = n->lower[0];
		node_pin(fs, n);
	}
	return 0;
}

int copy_up_meta(struct ovl *fs, struct node *n)
{
	return copy_up(fs, n, true);
}

int copy_up_meta_unnamed(struct ovl *fs, struct node *n)
{
	return copy_up(fs, n, false);
}

int copy_up_data(struct ovl *fs, struct node *n)
{
	int res = copy_up_meta(fs, n);
	if (res < 0 || !S_ISREG(n->type))
		return res;
	struct upper *u = n->upper;
	if (!fs->cfg.shared_access) {
		/* the cow map sends reads of what was never written to the
		 * lower file, which cannot change under us */
		pthread_mutex_lock(&n->lock);
		bool was_up = upper_data_is_up(&u->data);
		upper_use_files(fs, u);
		res = upper_data_start_lazy(fs->store, &u->data, (uint64_t)u->st.st_size);
		pthread_mutex_unlock(&n->lock);
		if (res == 0 && !was_up)
			stats_copyup(&fs->stats, COPYUP_LAZY);
		return res;
	}
	pthread_mutex_lock(&n->lock);
	bool up = upper_data_is_up(&u->data);
	pthread_mutex_unlock(&n->lock);
	if (up)
		return 0;
	int fd = ovl_open_lower(fs, n, 0, O_RDONLY);
	if (fd < 0)
		return fd;
	pthread_mutex_lock(&n->lock);
	up = upper_data_is_up(&u->data);
	upper_use_files(fs, u);
	res = upper_data_start_copy(fs->store, &u->data, fd, (uint64_t)u->st.st_size);
	pthread_mutex_unlock(&n->lock);
	close(fd);
	if (res == 0 && !up)
		stats_copyup(&fs->stats, COPYUP_WHOLE);
	return res;
}

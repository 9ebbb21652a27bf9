/* SPDX-License-Identifier: Apache-2.0 */
/* writeback.c: upperdir=/workdir= — the in-memory upper layer written back
 * into an upper directory in kernel overlayfs format, so that kernel
 * overlayfs, fuse-overlayfs, containers/storage and a later memoverlay
 * mount read the same tree the mount showed.
 *
 * Reading: the upper directory is layer 0 (super.c), read lazily as the
 * top layer, so a mount over a big upper directory is up at once.
 *
 * Writing, one pass (writeback_all), under ns_lock held for writing:
 *   1. plan: walk the in-memory upper tree. Each upper object changed since
 *      the last pass (upper->wb_dirty), or not yet at its place in the
 *      directory, is made complete — data, owner, mode, xattrs, times —
 *      under a fresh name in WORKDIR/work. Nothing in the upper directory
 *      changes yet, so every source (an upper-directory file being renamed,
 *      say) is still there to be read.
 *   2. syncfs (not with volatile), then rename each one into place, parents
 *      first. A file is replaced by rename(2): a crash leaves either the
 *      old or the new file, never half of one. A directory that must be
 *      replaced whole is swapped in with RENAME_EXCHANGE.
 *   3. deletions: whiteouts (a char device 0/0; where mknod is refused, a
 *      .wh.NAME file, as fuse-overlayfs writes without privileges) where a
 *      lower layer still has the name, plain removal where none has it.
 *   4. the nodes written now come from the upper directory (their lower
 *      origin points there), so the next pass knows they are in place and
 *      lookups keep finding what is no longer in memory alone.
 * Only what changed is written: a directory not changed is walked in
 * memory (for its changed children) and costs no system call.
 *
 * Directories: a directory that merges lower ones and was not renamed is
 * made in the upper directory empty, and merges there as in the kernel. A
 * renamed directory with lower content, or a new directory where a lower
 * layer has one, is written as an opaque copy of everything it shows (as
 * kernel overlayfs does without redirect_dir, and as `mv` does on EXDEV):
 * read the same by every overlay, at the price of copying the subtree once.
 * No trusted.overlay.redirect is written.
 *
 * Owners: real owners where the daemon may chown (root, or root of a user
 * namespace for mapped ids). Otherwise the owner goes to the xattr
 * user.containers.override_stat ("UID:GID:0MODE", what containers/storage
 * and fuse-overlayfs read) and the file stays the daemon's, with the owner
 * bits it needs to read and write it.
 */
#include "memoverlay.h"
#include "hints.h"
#include "lower_links.h"
#include "writeback.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define OVERRIDE_STAT_XATTR "user.containers.override_stat"
#define OPAQUE_FILE ".wh..wh..opq"

struct writeback {
	int work_fd;            /* WORKDIR/work, O_DIRECTORY */
	uid_t uid;              /* the daemon's, taken at start (seccomp) */
	gid_t gid;
	bool can_chown;         /* root (of some user namespace) */
	bool read_override;     /* the upper root carries OVERRIDE_STAT_XATTR */
	bool trusted;           /* may write trusted.* (root of the initial namespace) */
	const char *opaque_xattr;
	unsigned long seq;      /* names in work/ */
	/* lpath and lower arrays replaced by a pass: a read-only open may be
	 * reading them without ns_lock (file.c), so they live until unmount */
	void **graveyard;
	size_t ngrave, cgrave;
};

enum move_kind { MOVE_RENAME, MOVE_LINK };
struct move {
	enum move_kind kind;
	char *tmp;              /* name in work/ */
	char *target;           /* path in the upper directory */
	char *link_src;         /* MOVE_LINK: an upper-directory path of the inode */
};
/* A node written at path; applied when move `after` is done. */
struct update {
	struct node *n;         /* pinned */
	char *path;
	size_t after;           /* move index, or SIZE_MAX: none needed */
	bool merge;             /* directory merging its lower layers below */
};
struct hardlink {
	struct node *n;
	char *path;             /* where its first name lands */
};

struct plan {
	struct move *mv;
	size_t nmv, cmv;
	struct removal {
		char *path;     /* to delete from the upper directory */
		bool whiteout;  /* a lower layer shows there: hide it */
	} *rm;
	size_t nrm, crm;
	struct update *up;
	size_t nup, cup;
	struct hardlink *hl;
	size_t nhl, chl;
	struct walked {         /* directories whose entries a pass wrote (pinned) */
		struct node *n;
		char *path;
		bool took_dirty;
	} *walked;
	size_t nwalked, cwalked;
	int err;
};

#define GROW(arr, n, cap) \
	((n) < (cap) || grow((void **)&(arr), &(cap), sizeof(*(arr))) == 0)

static int grow(void **arr, size_t *cap, size_t size)
{
	size_t c = *cap ? *cap * 2 : 16;
	void *g = realloc(*arr, c * size);
	if (!g)
		return -1;
	*arr = g;
	*cap = c;
	return 0;
}

static void plan_fail(struct plan *p, int err)
{
	if (!p->err && err < 0)
		p->err = err;
}

static void bury(struct writeback *wb, void *ptr)
{
	if (!ptr)
		return;
	if (!GROW(wb->graveyard, wb->ngrave, wb->cgrave)) {
		return; /* a leak rather than a use after free */
	}
	wb->graveyard[wb->ngrave++] = ptr;
}

/* ---- small helpers on the upper directory ---- */

static char *parent_of(const char *path, const char **name)
{
	const char *slash = strrchr(path, '/');
	*name = slash ? slash + 1 : path;
	return strndup(path, slash ? (size_t)(slash - path) : 0);
}

/* The parent directory of path in the upper directory, opened beneath it. */
static int open_parent(struct ovl *fs, const char *path, const char **name)
{
	char *parent = parent_of(path, name);
	if (!parent)
		return -ENOMEM;
	int fd = layer_open(&fs->layers[UPPERDIR_LAYER], parent, O_PATH | O_DIRECTORY);
	free(parent);
	return fd;
}

/* Whether a layer below the upper directory has something at path: then
 * a deletion needs a whiteout, and a new directory must be opaque. */
static bool lower_layers_have(struct ovl *fs, const char *path)
{
	for (int i = UPPERDIR_LAYER + 1; i < fs->nlayers; i++) {
		int fd = layer_open(&fs->layers[i], path, O_PATH);
		if (fd >= 0) {
			close(fd);
			return true;
		}
	}
	return false;
}

/* rm -rf of name in dirfd. */
static int remove_tree(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	struct dirent *e;
	int res = 0;
	while (res == 0 && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		res = remove_tree(fd, e->d_name);
	}
	closedir(d);
	if (res == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		res = -errno;
	return res;
}

static char *work_name(struct writeback *wb)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "#mo.%lx", wb->seq++);
	return strdup(buf);
}

/* Removes name from dirfd in one step, as a rename into work/, then
 * deletes it there: a crash in the middle of removing a big directory
 * leaves it whole in work/ (cleared by the next mount), never half gone
 * from the upper directory. */
static int discard(struct writeback *wb, int dirfd, const char *name)
{
	char *tmp = work_name(wb);
	if (!tmp)
		return -ENOMEM;
	int res = 0;
	if (renameat(dirfd, name, wb->work_fd, tmp) < 0)
		res = errno == ENOENT ? 0 : -errno;
	else
		res = remove_tree(wb->work_fd, tmp);
	free(tmp);
	return res;
}

/* ---- one object, made complete in a directory of work/ ---- */

static void proc_path(char *buf, size_t size, int dirfd, const char *name)
{
	if (name[0])
		snprintf(buf, size, "/proc/self/fd/%d/%s", dirfd, name);
	else /* "/.": l*xattr(2) act on the directory, not on the magic link */
		snprintf(buf, size, "/proc/self/fd/%d/.", dirfd);
}

static int set_override_stat(const char *proc, uid_t uid, gid_t gid, mode_t mode)
{
	char v[64];
	int len = snprintf(v, sizeof(v), "%u:%u:0%o", (unsigned)uid, (unsigned)gid,
			   (unsigned)(mode & 07777));
	return lsetxattr(proc, OVERRIDE_STAT_XATTR, v, (size_t)len, 0) < 0 ? -errno : 0;
}

/* Owner, mode, xattrs and times of u onto name in dirfd ("" = dirfd). With
 * clear_xattrs, xattrs there that u does not have go (an object written
 * in place). */
static int apply_meta(struct ovl *fs, int dirfd, const char *name, const struct upper *u,
		      bool clear_xattrs)
{
	struct writeback *wb = fs->wb;
	char proc[PATH_MAX + 64];
	proc_path(proc, sizeof(proc), dirfd, name);
	const struct stat *st = &u->st;
	bool lnk = S_ISLNK(st->st_mode);
	int flags = AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH);
	int res = 0;

	if (clear_xattrs) {
		char names[4096];
		ssize_t len = llistxattr(proc, names, sizeof(names));
		for (ssize_t i = 0; i < len; i += (ssize_t)strlen(names + i) + 1) {
			const char *x = names + i;
			if (!xattr_is_private(x) && strcmp(x, OVERRIDE_STAT_XATTR) != 0 &&
			    !upper_xattr_get(u, x))
				lremovexattr(proc, x);
		}
	}
	/* the owner as the disk keeps it: uidmapping= shows C+k as H+k */
	uid_t uid = st->st_uid;
	gid_t gid = st->st_gid;
	idmap_to_disk(&fs->cfg, &uid, &gid);
	/* a fresh object is the daemon's already */
	bool owned = !clear_xattrs && uid == wb->uid && gid == wb->gid;
	if (!owned && wb->can_chown)
		owned = fchownat(dirfd, name, uid, gid, flags) == 0;
	mode_t mode = st->st_mode & 07777;
	/* A daemon without privileges keeps the owner bits it needs to read,
	 * write and rename what it wrote; the real mode (and an owner it
	 * could not set) goes to the override, dirs and files only, as
	 * fuse-overlayfs does. */
	if (!wb->can_chown)
		mode |= S_ISDIR(st->st_mode) ? S_IRWXU : S_IRUSR | S_IWUSR;
	if ((!owned || mode != (st->st_mode & 07777)) &&
	    (S_ISDIR(st->st_mode) || S_ISREG(st->st_mode)))
		res = set_override_stat(proc, uid, gid, st->st_mode);
	if (!lnk && chmod(proc, mode) < 0 && res == 0)
		res = -errno;
	for (size_t i = 0; i < u->nxattrs; i++) {
		const struct xattr *x = &u->xattrs[i];
		/* trusted.* needs CAP_SYS_ADMIN, security.* may be refused by
		 * the LSM: what cannot be written stays in memory only */
		if (lsetxattr(proc, x->name, x->value, x->size, 0) < 0 && errno != EPERM &&
		    errno != ENOTSUP && res == 0)
			res = -errno;
	}
	struct timespec ts[2] = { st->st_atim, st->st_mtim };
	if (utimensat(dirfd, name, ts, flags) < 0 && res == 0)
		res = -errno;
	return res;
}

static int set_opaque(struct ovl *fs, int dirfd, const char *name)
{
	struct writeback *wb = fs->wb;
	char proc[PATH_MAX + 64];
	proc_path(proc, sizeof(proc), dirfd, name);
	int res = lsetxattr(proc, wb->opaque_xattr, "y", 1, 0) < 0 ? -errno : 0;
	if (!wb->trusted && !fs->cfg.userxattr) {
		/* the kernel reads user.overlay.opaque only with userxattr;
		 * fuse-overlayfs also takes this file */
		int dfd = openat(dirfd, name[0] ? name : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
		int fd = dfd < 0 ? -1 : openat(dfd, OPAQUE_FILE, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
		if (fd >= 0) {
			close(fd);
			res = 0;
		}
		if (dfd >= 0)
			close(dfd);
	}
	return res;
}

/* The bytes of n into fd: the filestore's (and, for a lazy copy-up, the
 * lower file's where never written), or the lower file's. */
static int copy_data(struct ovl *fs, struct node *n, int fd)
{
	struct upper *u = n->upper;
	int lower = -1;
	pthread_mutex_lock(&n->lock);
	bool need_lower = upper_data_reads_lower(&u->data);
	pthread_mutex_unlock(&n->lock);
	if (need_lower) {
		lower = ovl_open_lower(fs, n, 0, O_RDONLY);
		if (lower < 0)
			return lower;
	}
	int res = 0;
	pthread_mutex_lock(&n->lock);
	u->wb_dirty = false; /* a write from now on marks it again */
	if (upper_data_is_up(&u->data)) {
		uint64_t size = upper_data_size(&u->data);
		for (uint64_t off = 0; res == 0 && off < size;) {
			size_t len = size - off > (1u << 20) ? (1u << 20) : (size_t)(size - off);
			struct fuse_bufvec *src = NULL;
			res = upper_data_read(fs->store, &u->data, lower, off, len, &src);
			if (res < 0)
				break;
			size_t got = fuse_buf_size(src);
			struct fuse_bufvec dst = FUSE_BUFVEC_INIT(got);
			dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
			dst.buf[0].fd = fd;
			dst.buf[0].pos = (off_t)off;
			ssize_t w = got ? fuse_buf_copy(&dst, src, 0) : 0;
			free(src);
			if (w < 0)
				res = (int)w;
			else if (w == 0)
				break;
			else
				off += (uint64_t)w;
		}
		if (res == 0 && ftruncate(fd, (off_t)size) < 0)
			res = -errno;
	} else {
		off_t size = u->st.st_size, in = 0, out = 0;
		while (res == 0 && in < size) {
			ssize_t w = copy_file_range(lower, &in, fd, &out, (size_t)(size - in), 0);
			if (w < 0)
				res = -errno;
			else if (w == 0)
				break;
		}
	}
	if (res < 0)
		u->wb_dirty = true;
	pthread_mutex_unlock(&n->lock);
	if (lower >= 0)
		close(lower);
	return res;
}

static int symlink_target(struct ovl *fs, struct node *n, char *buf, size_t size)
{
	if (n->upper->symlink) {
		snprintf(buf, size, "%s", n->upper->symlink);
		return 0;
	}
	return ovl_read_lower_link(fs, n, buf, size);
}

/* Creates n (which has its upper copy) as name in dirfd, complete but for
 * a directory's entries. */
static int make_object(struct ovl *fs, struct node *n, int dirfd, const char *name)
{
	struct upper *u = n->upper;
	mode_t type = n->type;
	int res = 0;
	if (S_ISREG(type)) {
		int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		res = copy_data(fs, n, fd);
		close(fd);
	} else {
		pthread_mutex_lock(&n->lock);
		u->wb_dirty = false;
		dev_t rdev = u->st.st_rdev;
		pthread_mutex_unlock(&n->lock);
		if (S_ISDIR(type)) {
			res = mkdirat(dirfd, name, 0700) < 0 ? -errno : 0;
		} else if (S_ISLNK(type)) {
			char target[PATH_MAX + 1];
			res = symlink_target(fs, n, target, sizeof(target));
			if (res == 0 && symlinkat(target, dirfd, name) < 0)
				res = -errno;
		} else {
			res = mknodat(dirfd, name, type | 0600, rdev) < 0 ? -errno : 0;
		}
	}
	if (res == 0) {
		pthread_mutex_lock(&n->lock);
		res = apply_meta(fs, dirfd, name, u, false);
		pthread_mutex_unlock(&n->lock);
	}
	if (res < 0) {
		pthread_mutex_lock(&n->lock);
		u->wb_dirty = true;
		pthread_mutex_unlock(&n->lock);
	}
	return res;
}

/* ---- the plan ---- */

static void plan_update(struct ovl *fs, struct plan *p, struct node *n, const char *path, size_t after, bool merge)
{
	char *dup = strdup(path);
	if (!dup || !GROW(p->up, p->nup, p->cup)) {
		free(dup);
		plan_fail(p, -ENOMEM);
		return;
	}
	node_pin(fs, n);
	p->up[p->nup++] = (struct update){ .n = n, .path = dup, .after = after, .merge = merge };
}

/* Reserves the move of a fresh object in work/ to target; returns its index. */
static size_t plan_move(struct plan *p, enum move_kind kind, char *tmp, const char *target,
			const char *link_src)
{
	char *t = strdup(target);
	char *ls = link_src ? strdup(link_src) : NULL;
	if (!t || (link_src && !ls) || !GROW(p->mv, p->nmv, p->cmv)) {
		free(t);
		free(ls);
		free(tmp);
		plan_fail(p, -ENOMEM);
		return SIZE_MAX;
	}
	p->mv[p->nmv] = (struct move){ .kind = kind, .tmp = tmp, .target = t, .link_src = ls };
	return p->nmv++;
}

/* Whether a lower layer would show path, an entry of directory d, once it
 * is gone from the upper directory: then a whiteout must hide it. d's own
 * layers say so, not every layer at that path: an opaque copy of d written
 * by a pass before merges none, and a whiteout inside an opaque directory
 * is an entry kernel overlayfs lists but cannot look up. */
static bool lower_shows(struct ovl *fs, const struct node *d, const char *path)
{
	for (uint16_t k = 0; k < d->nlower; k++) {
		if (d->lower[k] == UPPERDIR_LAYER)
			continue;
		int fd = layer_open(&fs->layers[d->lower[k]], path, O_PATH);
		if (fd >= 0) {
			close(fd);
			return true;
		}
	}
	return false;
}

static void plan_remove(struct ovl *fs, struct plan *p, const struct node *d, const char *path)
{
	char *dup = strdup(path);
	if (!dup || !GROW(p->rm, p->nrm, p->crm)) {
		free(dup);
		plan_fail(p, -ENOMEM);
		return;
	}
	p->rm[p->nrm++] = (struct removal){ .path = dup, .whiteout = lower_shows(fs, d, path) };
}

/* Where another name of a hard-linked n went, if one did. */
static const char *hardlink_seen(struct plan *p, struct node *n)
{
	for (size_t i = 0; i < p->nhl; i++)
		if (p->hl[i].n == n)
			return p->hl[i].path;
	return NULL;
}

static void hardlink_note(struct plan *p, struct node *n, const char *path)
{
	char *dup = strdup(path);
	if (!dup || !GROW(p->hl, p->nhl, p->chl)) {
		free(dup);
		return; /* its other names are then written as copies */
	}
	p->hl[p->nhl++] = (struct hardlink){ .n = n, .path = dup };
}

static bool is_hardlinked(struct node *n)
{
	return !S_ISDIR(n->type) && n->upper && n->upper->st.st_nlink > 1;
}

static bool take_dirty(struct node *n)
{
	pthread_mutex_lock(&n->lock);
	/* passthrough=upper: what the kernel wrote since the last look, and
	 * while a backed writer is open, whatever it may have written (the
	 * file's times need not move for a write, and its RELEASE may never
	 * come before the end) */
	upper_sync_file(n->upper, NULL);
	bool d = n->upper->wb_dirty || n->pt.nbacked_writers;
	pthread_mutex_unlock(&n->lock);
	return d;
}

/* n's origin is the upper directory at path: it is there already. */
static bool in_place(const struct node *n, const char *path)
{
	return n->nlower > 0 && n->lower[0] == UPPERDIR_LAYER && n->lpath &&
	       strcmp(n->lpath, path) == 0;
}

static void build_dir(struct ovl *fs, struct plan *p, struct node *d, int dirfd, const char *path,
		      size_t after);

/* A hard-linked n, unchanged, already in the upper directory at its origin:
 * its name path becomes a link of that, made now, while the directory is
 * still as the plan found it (a move of this pass may write another
 * object over the origin), in dirfd (a directory being built) or in work/
 * to be moved. Nothing at all when path is already that inode (rename(2)
 * over another name of the same inode does nothing, and the new link
 * would stay behind in work/). *idx: the move, or unchanged. */
static int link_from_upper(struct ovl *fs, struct plan *p, struct node *n, const char *path,
			   int dirfd, const char *name, size_t *idx)
{
	const char *oname, *tname;
	int ofd = open_parent(fs, n->lpath, &oname);
	if (ofd < 0)
		return ofd;
	int res = 0;
	if (dirfd < 0) {
		struct stat o, t;
		int tfd = open_parent(fs, path, &tname);
		bool same = tfd >= 0 && fstatat(ofd, oname, &o, AT_SYMLINK_NOFOLLOW) == 0 &&
			    fstatat(tfd, tname, &t, AT_SYMLINK_NOFOLLOW) == 0 &&
			    o.st_dev == t.st_dev && o.st_ino == t.st_ino;
		if (tfd >= 0)
			close(tfd);
		if (!same) {
			char *tmp = work_name(fs->wb);
			res = !tmp ? -ENOMEM :
			      linkat(ofd, oname, fs->wb->work_fd, tmp, 0) < 0 ? -errno : 0;
			if (res == 0)
				*idx = plan_move(p, MOVE_RENAME, tmp, path, NULL);
			else
				free(tmp);
		}
	} else if (linkat(ofd, oname, dirfd, name, 0) < 0) {
		res = -errno;
	}
	close(ofd);
	return res;
}

/* Writes a non-directory n as path: a fresh copy in work/ (or in dirfd, a
 * directory being built there, when dirfd >= 0), or a link to where its
 * other name went. */
static void plan_nondir(struct ovl *fs, struct plan *p, struct node *n, const char *path,
			int dirfd, const char *name, size_t after)
{
	/* another name of it is written in this pass: linked to once there */
	const char *other = is_hardlinked(n) ? hardlink_seen(p, n) : NULL;
	if (other) {
		size_t idx = plan_move(p, MOVE_LINK, work_name(fs->wb), path, other);
		if (idx != SIZE_MAX) /* else the plan failed: nothing moves */
			plan_update(fs, p, n, path, idx, false);
		return;
	}
	int res;
	size_t idx = after;
	if (is_hardlinked(n) && n->nlower > 0 && n->lower[0] == UPPERDIR_LAYER && n->lpath &&
	    !take_dirty(n)) {
		/* unchanged, in the upper directory under another name already */
		res = link_from_upper(fs, p, n, path, dirfd, name, &idx);
	} else if (dirfd >= 0) {
		res = make_object(fs, n, dirfd, name);
	} else {
		char *tmp = work_name(fs->wb);
		res = tmp ? make_object(fs, n, fs->wb->work_fd, tmp) : -ENOMEM;
		if (res == 0)
			idx = plan_move(p, MOVE_RENAME, tmp, path, NULL);
		else
			free(tmp);
	}
	if (res < 0) {
		plan_fail(p, res);
		return;
	}
	if (is_hardlinked(n))
		hardlink_note(p, n, path);
	/* also where only a link was added: its origin must be a name this
	 * pass leaves in place (the old one may be written over by another
	 * object, say after a rename exchange) */
	plan_update(fs, p, n, path, idx, false);
}

/* A directory written whole: made in work/ (or in dirfd) with every entry
 * it shows, opaque where a lower layer has one at path. */
static void plan_whole_dir(struct ovl *fs, struct plan *p, struct node *d, const char *path,
			   int dirfd, const char *name, size_t after)
{
	int parent = dirfd >= 0 ? dirfd : fs->wb->work_fd;
	char *tmp = dirfd >= 0 ? strdup(name) : work_name(fs->wb);
	int res = tmp ? make_object(fs, d, parent, tmp) : -ENOMEM;
	if (res == 0 && lower_layers_have(fs, path))
		res = set_opaque(fs, parent, tmp);
	if (res < 0) {
		plan_fail(p, res);
		free(tmp);
		return;
	}
	/* the move first, so that moves inside it (hard links) come after */
	size_t idx = dirfd >= 0 ? after : plan_move(p, MOVE_RENAME, strdup(tmp), path, NULL);
	int fd = openat(parent, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	free(tmp);
	if (fd < 0) {
		plan_fail(p, -errno);
		return;
	}
	build_dir(fs, p, d, fd, path, idx);
	/* entries made inside moved its times: set them again */
	struct timespec ts[2] = { d->upper->st.st_atim, d->upper->st.st_mtim };
	futimens(fd, ts);
	close(fd);
	plan_update(fs, p, d, path, idx, false);
}

/* Every entry d shows, into dirfd (a fresh directory in work/). Entries
 * only a lower layer has get their upper copy (metadata only) and their
 * name in d first, so that everything written has one owner: the upper. */
static void build_dir(struct ovl *fs, struct plan *p, struct node *d, int dirfd, const char *path,
		      size_t after)
{
	struct name_list ns = { 0 };
	int res = ovl_dir_list(fs, d, name_list_add, &ns);
	plan_fail(p, res);
	for (size_t i = 0; res == 0 && i < ns.n; i++) {
		struct node *c;
		struct stat st;
		res = ovl_lookup_name(fs, d, ns.v[i], false, &c, &st);
		if (res == -ENOENT) {
			res = 0;
			continue;
		}
		if (res < 0)
			break;
		res = copy_up_meta(fs, c);
		/* named in d itself: after this pass d's origin is its copy
		 * here, where a lower name would be looked up as another inode
		 * (copy-up names a hard link only where the mount found it
		 * first, maybe elsewhere) */
		struct node *there;
		if (res == 0 && !dirmap_get(&d->upper->dir, ns.v[i], &there))
			res = dirmap_set(fs, &d->upper->dir, ns.v[i], c);
		char *cpath = res == 0 ? path_join(path, ns.v[i]) : NULL;
		if (res == 0 && !cpath)
			res = -ENOMEM;
		if (res == 0 && S_ISDIR(c->type))
			plan_whole_dir(fs, p, c, cpath, dirfd, ns.v[i], after);
		else if (res == 0)
			plan_nondir(fs, p, c, cpath, dirfd, ns.v[i], after);
		free(cpath);
		node_put(fs, c);
	}
	plan_fail(p, res);
	name_list_free(&ns);
}

/* d is in the upper directory at path (or, fresh, will be once its move
 * is done, made complete but for its entries): bring its changed entries
 * there. */
static void walk_dir(struct ovl *fs, struct plan *p, struct node *d, const char *path, bool fresh)
{
	struct upper *u = d->upper;
	bool dirty = fresh || take_dirty(d);
	char *wpath = dirty ? strdup(path) : NULL;
	if (wpath && GROW(p->walked, p->nwalked, p->cwalked)) {
		node_pin(fs, d);
		p->walked[p->nwalked++] = (struct walked){ .n = d, .path = wpath, .took_dirty = !fresh };
	} else {
		free(wpath);
	}
	if (dirty && !fresh) {
		const char *name = "";
		int pfd = path[0] ? open_parent(fs, path, &name) : -1;
		int dirfd = path[0] ? pfd : fs->layers[UPPERDIR_LAYER].root_fd;
		int res = dirfd < 0 ? dirfd : 0;
		pthread_mutex_lock(&d->lock);
		u->wb_dirty = false;
		pthread_mutex_unlock(&d->lock);
		if (res == 0) {
			pthread_mutex_lock(&d->lock);
			res = apply_meta(fs, dirfd, name, u, true);
			pthread_mutex_unlock(&d->lock);
		}
		if (pfd >= 0)
			close(pfd);
		if (res < 0) {
			plan_fail(p, res);
			pthread_mutex_lock(&d->lock);
			u->wb_dirty = true;
			pthread_mutex_unlock(&d->lock);
		}
	}
	dirmap_for_each(&u->dir, s) {
		struct node *c = s->child;
		char *cpath = path_join(path, s->name);
		if (!cpath) {
			plan_fail(p, -ENOMEM);
			break;
		}
		if (!c) {
			if (dirty)
				plan_remove(fs, p, d, cpath);
		} else if (!S_ISDIR(c->type)) {
			/* a name already in place is written again too where this
			 * pass made a fresh copy of its inode under another name
			 * (the walk met that one first): it must become a link of
			 * the copy, or the hard link would break in two */
			if (take_dirty(c) || !in_place(c, cpath) ||
			    (is_hardlinked(c) && hardlink_seen(p, c))) {
				plan_nondir(fs, p, c, cpath, -1, NULL, SIZE_MAX);
			} else if (is_hardlinked(c)) {
				hardlink_note(p, c, cpath);
			}
		} else if (in_place(c, cpath) && !c->upper->opaque) {
			walk_dir(fs, p, c, cpath, false);
		} else if (c->nlower > 0 && !c->upper->opaque && c->lpath && strcmp(c->lpath, cpath) == 0) {
			/* merges lower directories at the same path: made empty
			 * here, it merges with them as in the kernel */
			char *tmp = work_name(fs->wb);
			int res = tmp ? make_object(fs, c, fs->wb->work_fd, tmp) : -ENOMEM;
			if (res == 0) {
				size_t idx = plan_move(p, MOVE_RENAME, tmp, cpath, NULL);
				plan_update(fs, p, c, cpath, idx, true);
				/* its entries are moved in after it */
				walk_dir(fs, p, c, cpath, true);
			} else {
				free(tmp);
				plan_fail(p, res);
			}
		} else {
			plan_whole_dir(fs, p, c, cpath, -1, NULL, SIZE_MAX);
		}
		free(cpath);
	}
}

/* ---- carrying it out ---- */

/* Renames work/tmp to target in the upper directory, replacing what is
 * there: atomically for anything but a directory over a directory, which
 * is swapped in whole and the old one removed from work/. */
/* The parent directory of the last move, kept open for the next one:
 * moves come in walk order, a directory's entries one after another. */
struct parent_cache {
	char *path;
	int fd;
};

static int cached_parent(struct ovl *fs, struct parent_cache *pc, const char *target,
			 const char **name)
{
	const char *slash = strrchr(target, '/');
	size_t len = slash ? (size_t)(slash - target) : 0;
	*name = slash ? slash + 1 : target;
	if (pc->path && strlen(pc->path) == len && strncmp(pc->path, target, len) == 0)
		return pc->fd;
	if (pc->fd >= 0)
		close(pc->fd);
	free(pc->path);
	pc->path = NULL;
	pc->fd = open_parent(fs, target, name);
	if (pc->fd >= 0)
		pc->path = strndup(target, len);
	return pc->fd;
}

static void parent_cache_clear(struct parent_cache *pc)
{
	if (pc->fd >= 0)
		close(pc->fd);
	free(pc->path);
	pc->path = NULL;
	pc->fd = -1;
}

static int move_into_place(struct ovl *fs, struct parent_cache *pc, const char *tmp,
			   const char *target)
{
	struct writeback *wb = fs->wb;
	const char *name;
	int pfd = cached_parent(fs, pc, target, &name);
	if (pfd < 0)
		return pfd;
	int res = 0;
	if (renameat(wb->work_fd, tmp, pfd, name) < 0) {
		res = -errno;
		/* a directory over anything, or anything over a directory: swap
		 * it in whole, and remove the old one, now in work/ */
		if ((res == -EISDIR || res == -ENOTDIR || res == -ENOTEMPTY || res == -EEXIST) &&
		    renameat2(wb->work_fd, tmp, pfd, name, RENAME_EXCHANGE) == 0)
			res = remove_tree(wb->work_fd, tmp);
	}
	if (res == 0 && !wb->trusted) {
		/* a .wh. whiteout of an unprivileged pass before */
		char wh[NAME_MAX + 8];
		if (snprintf(wh, sizeof(wh), ".wh.%s", name) < (int)sizeof(wh))
			unlinkat(pfd, wh, 0);
	}
	return res;
}

static int do_move(struct ovl *fs, struct parent_cache *pc, struct move *m)
{
	if (m->kind == MOVE_LINK) {
		const char *name, *tname;
		int pfd = open_parent(fs, m->link_src, &name);
		if (pfd < 0)
			return pfd;
		/* the target is that inode already (both names were there before
		 * this pass): rename(2) over another name of the same inode does
		 * nothing and would leave the new link behind in work/ */
		struct stat src, dst;
		int tfd = cached_parent(fs, pc, m->target, &tname);
		if (tfd >= 0 && fstatat(pfd, name, &src, AT_SYMLINK_NOFOLLOW) == 0 &&
		    fstatat(tfd, tname, &dst, AT_SYMLINK_NOFOLLOW) == 0 &&
		    src.st_dev == dst.st_dev && src.st_ino == dst.st_ino) {
			close(pfd);
			return 0;
		}
		int res = linkat(pfd, name, fs->wb->work_fd, m->tmp, 0) < 0 ? -errno : 0;
		close(pfd);
		if (res < 0)
			return res;
	}
	return move_into_place(fs, pc, m->tmp, m->target);
}

/* Deletes a path from the upper directory, leaving a whiteout where a
 * lower layer shows it (lower_shows, at plan time). */
static int do_remove(struct ovl *fs, const struct removal *r)
{
	struct writeback *wb = fs->wb;
	const char *path = r->path;
	const char *name;
	int pfd = open_parent(fs, path, &name);
	if (pfd == -ENOENT || pfd == -ENOTDIR)
		return 0; /* its directory went too */
	if (pfd < 0)
		return pfd;
	bool need = r->whiteout;
	struct stat st;
	bool there = fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
	int res = 0;
	char wh[NAME_MAX + 8];
	snprintf(wh, sizeof(wh), ".wh.%s", name);
	if (need && there && layer_stat_is_whiteout(&st)) {
		close(pfd);
		return 0;
	}
	if (need) {
		char *tmp = work_name(wb);
		if (!tmp) {
			close(pfd);
			return -ENOMEM;
		}
		if (mknodat(wb->work_fd, tmp, S_IFCHR | 0600, makedev(0, 0)) == 0) {
			struct parent_cache pc = { .fd = -1 };
			res = move_into_place(fs, &pc, tmp, path);
			parent_cache_clear(&pc);
		} else {
			/* no whiteout devices here: the .wh. name (then the
			 * object it hides goes, below) */
			int fd = openat(wb->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
			res = fd < 0 ? -errno : 0;
			if (fd >= 0)
				close(fd);
			if (res == 0 && renameat(wb->work_fd, tmp, pfd, wh) < 0)
				res = -errno;
			if (res == 0 && there)
				res = discard(wb, pfd, name);
		}
		free(tmp);
	} else {
		if (there)
			res = discard(wb, pfd, name);
		unlinkat(pfd, wh, 0);
	}
	close(pfd);
	return res;
}

/* n is now in the upper directory at path. */
static int set_origin(struct ovl *fs, struct node *n, const char *path, bool merge)
{
	char *lpath = strdup(path);
	uint16_t keep = 0;
	if (merge && n->nlower > 0 && n->lower[0] != UPPERDIR_LAYER)
		keep = n->nlower;
	else if (merge)
		keep = n->nlower ? (uint16_t)(n->nlower - 1) : 0;
	uint16_t *lower = malloc(sizeof(*lower) * (size_t)(keep + 1));
	if (!lpath || !lower) {
		free(lpath);
		free(lower);
		return -ENOMEM;
	}
	lower[0] = UPPERDIR_LAYER;
	if (keep)
		memcpy(lower + 1, n->lower + (n->nlower - keep), sizeof(*lower) * keep);
	bury(fs->wb, n->lpath);
	bury(fs->wb, n->lower);
	n->lpath = lpath;
	n->lower = lower;
	n->nlower = (uint16_t)(keep + 1);
	return 0;
}

static void plan_free(struct ovl *fs, struct plan *p)
{
	for (size_t i = 0; i < p->nmv; i++) {
		free(p->mv[i].tmp);
		free(p->mv[i].target);
		free(p->mv[i].link_src);
	}
	for (size_t i = 0; i < p->nrm; i++)
		free(p->rm[i].path);
	for (size_t i = 0; i < p->nup; i++) {
		free(p->up[i].path);
		node_put(fs, p->up[i].n);
	}
	for (size_t i = 0; i < p->nhl; i++)
		free(p->hl[i].path);
	for (size_t i = 0; i < p->nwalked; i++) {
		node_put(fs, p->walked[i].n);
		free(p->walked[i].path);
	}
	free(p->walked);
	free(p->mv);
	free(p->rm);
	free(p->up);
	free(p->hl);
}

static void mark_dirty(struct node *n)
{
	pthread_mutex_lock(&n->lock);
	n->upper->wb_dirty = true;
	pthread_mutex_unlock(&n->lock);
}

/* ---- 0. the other lower names of copied-up hard links
 *
 * Copy-up names a lower hard link in the upper only where the mount found
 * it first; its other names are still lower names that show it (one
 * inode). Written back under the first name alone, the others would show
 * the old data on the next mount. So before the first pass that writes
 * such a file changed (lower_links_wanted), one walk of the layer it came
 * from (lower_links.c) makes each other name it shows an entry of the
 * in-memory upper too, its directory copied up (metadata only). What the
 * mount shows does not change; this pass and every later one then write
 * all the names as hard links of one object (walk_dir, plan_nondir), as
 * kernel overlayfs keeps them with index=on. */

struct naming {
	struct ovl *fs;
	struct lower_link *l;
	bool *failed;
};

static int name_lower_link(void *arg, size_t i, const char *path, struct node *dir,
			   const char *name)
{
	struct naming *g = arg;
	int res = copy_up_meta(g->fs, dir);
	if (res == 0)
		res = dirmap_set(g->fs, &dir->upper->dir, name, g->l[i].n);
	if (res == 0) {
		mark_dirty(dir); /* walked, so its times are set again after the pass */
	} else {
		/* that name keeps the old data in the upper directory; the
		 * next pass tries again */
		fprintf(stderr, "memoverlay: upperdir: cannot write '%s' as a hard link: %s\n",
			path, strerror(-res));
		g->failed[i] = true;
	}
	return 0;
}

static bool links_named(void *arg, const struct node *n)
{
	(void)arg;
	return n->upper->links_named;
}

static void name_lower_links(struct ovl *fs)
{
	struct naming g = { .fs = fs };
	size_t n;
	if (lower_links_copied_up(fs, links_named, NULL, &g.l, &n) < 0 || n == 0)
		return; /* -ENOMEM: the next pass tries again */
	g.failed = calloc(n, sizeof(*g.failed));
	/* a walk that failed (-ENOMEM) leaves every file to the next pass */
	if (g.failed && lower_links_walk(fs, g.l, n, name_lower_link, &g) < 0)
		for (size_t i = 0; i < n; i++)
			g.failed[i] = true;
	for (size_t i = 0; g.failed && i < n; i++) {
		if (g.failed[i])
			continue;
		pthread_mutex_lock(&g.l[i].n->lock);
		g.l[i].n->upper->links_named = true;
		pthread_mutex_unlock(&g.l[i].n->lock);
	}
	free(g.failed);
	lower_links_put(fs, g.l, n);
}

static void retime_dir(struct ovl *fs, struct node *d, const char *path)
{
	const char *name = "";
	int pfd = path[0] ? open_parent(fs, path, &name) : -1;
	int dirfd = path[0] ? pfd : fs->layers[UPPERDIR_LAYER].root_fd;
	if (dirfd < 0)
		return;
	pthread_mutex_lock(&d->lock);
	struct timespec ts[2] = { d->upper->st.st_atim, d->upper->st.st_mtim };
	pthread_mutex_unlock(&d->lock);
	utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH));
	if (pfd >= 0)
		close(pfd);
}

int writeback_all(struct ovl *fs)
{
	struct writeback *wb = fs->wb;
	if (!wb || wb->work_fd < 0)
		return 0; /* none, or a read-only mount */
	struct plan p = { 0 };
	pthread_rwlock_wrlock(&fs->ns_lock);
	name_lower_links(fs);
	walk_dir(fs, &p, fs->root, "", false);
	/* what is in work/ reaches the disk before it is renamed into place */
	if (!fs->cfg.volatile_wb && syncfs(wb->work_fd) < 0)
		plan_fail(&p, -errno);
	size_t done = 0;
	struct parent_cache pc = { .fd = -1 };
	if (!p.err) {
		for (; done < p.nmv; done++) {
			int res = do_move(fs, &pc, &p.mv[done]);
			if (res < 0) {
				fprintf(stderr, "memoverlay: upperdir: cannot write '%s': %s\n",
					p.mv[done].target, strerror(-res));
				plan_fail(&p, res);
				break;
			}
		}
	}
	parent_cache_clear(&pc);
	for (size_t i = 0; !p.err && i < p.nrm; i++) {
		int res = do_remove(fs, &p.rm[i]);
		if (res < 0) {
			fprintf(stderr, "memoverlay: upperdir: cannot remove '%s': %s\n",
				p.rm[i].path, strerror(-res));
			plan_fail(&p, res);
		}
	}
	for (size_t i = 0; i < p.nup; i++) {
		struct update *u = &p.up[i];
		bool moved = u->after == SIZE_MAX || u->after < done;
		if (!moved || set_origin(fs, u->n, u->path, u->merge) < 0)
			mark_dirty(u->n);
	}
	if (p.err) {
		/* the directories walked must be walked again */
		mark_dirty(fs->root);
		for (size_t i = 0; i < p.nwalked; i++)
			if (p.walked[i].took_dirty)
				mark_dirty(p.walked[i].n);
		for (size_t i = done; i < p.nmv; i++)
			remove_tree(wb->work_fd, p.mv[i].tmp);
	}
	/* entries moved in and out changed their directories' times */
	for (size_t i = 0; i < p.nwalked; i++)
		retime_dir(fs, p.walked[i].n, p.walked[i].path);
	if (!fs->cfg.volatile_wb && syncfs(wb->work_fd) < 0)
		plan_fail(&p, -errno);
	pthread_rwlock_unlock(&fs->ns_lock);
	int err = p.err;
	plan_free(fs, &p);
	return err;
}

int writeback_fsync(struct ovl *fs)
{
	if (!fs->wb || fs->cfg.volatile_wb)
		return 0;
	return writeback_all(fs);
}

bool writeback_writable(const struct ovl *fs)
{
	return fs->wb && fs->wb->work_fd >= 0;
}

/* ---- start and end ---- */

int writeback_init(struct ovl *fs)
{
	const struct config *cfg = &fs->cfg;
	if (!cfg->upperdir)
		return 0;
	struct writeback *wb = calloc(1, sizeof(*wb));
	if (!wb)
		return report_path_error("upperdir", cfg->upperdir, ENOMEM);
	wb->work_fd = -1;
	fs->wb = wb;
	wb->uid = geteuid();
	wb->gid = getegid();
	wb->can_chown = geteuid() == 0;
	wb->trusted = geteuid() == 0 && in_initial_user_ns() && !cfg->userxattr;
	wb->opaque_xattr = wb->trusted ? "trusted.overlay.opaque" : "user.overlay.opaque";
	char proc[64];
	proc_path(proc, sizeof(proc), fs->layers[UPPERDIR_LAYER].root_fd, "");
	if (cfg->flags & HINTS_OPT_RDONLY) {
		/* nothing to write back: neither DIR nor WORKDIR is touched */
		wb->read_override = lgetxattr(proc, OVERRIDE_STAT_XATTR, NULL, 0) > 0;
		return 0;
	}
	/* As kernel overlayfs: scratch space in WORKDIR/work. A crash can
	 * leave only objects that were never renamed into place there. */
	int wd = open(cfg->workdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (wd < 0)
		return report_path_error("workdir", cfg->workdir, errno);
	if (mkdirat(wd, "work", 0700) < 0 && errno != EEXIST) {
		int e = errno;
		close(wd);
		return report_path_error("workdir", cfg->workdir, e);
	}
	wb->work_fd = openat(wd, "work", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int e = errno;
	close(wd);
	if (wb->work_fd < 0)
		return report_path_error("workdir", cfg->workdir, e);
	/* One daemon at a time on a workdir, as the kernel's "inuse" lock:
	 * unmount(2) returns before the daemon has written back (the kernel
	 * waits for no FUSE daemon at unmount), so the next mount of the same
	 * upper waits here for the last one to finish; engines unmount and
	 * mount again between run, stop, cp, diff and commit. */
	if (flock(wb->work_fd, LOCK_EX | LOCK_NB) < 0) {
		fprintf(stderr, "memoverlay: workdir '%s' is in use; waiting for the daemon "
			"using it to finish\n", cfg->workdir);
		if (flock(wb->work_fd, LOCK_EX) < 0)
			return report_path_error("workdir", cfg->workdir, errno);
	}
	DIR *d = fdopendir(dup(wb->work_fd));
	struct dirent *ent;
	int res = d ? 0 : -errno;
	while (res == 0 && d && (ent = readdir(d)) != NULL)
		if (strcmp(ent->d_name, ".") != 0 && strcmp(ent->d_name, "..") != 0)
			res = remove_tree(wb->work_fd, ent->d_name);
	if (d)
		closedir(d);
	if (res < 0)
		return report_path_error("workdir", cfg->workdir, -res);
	if (!wb->can_chown) {
		/* fuse-overlayfs reads user.containers.override_stat only where
		 * the layer's root carries it */
		struct stat st;
		if (lgetxattr(proc, OVERRIDE_STAT_XATTR, NULL, 0) < 0 && stat(proc, &st) == 0)
			set_override_stat(proc, st.st_uid, st.st_gid, st.st_mode);
	}
	wb->read_override = lgetxattr(proc, OVERRIDE_STAT_XATTR, NULL, 0) > 0;
	return 0;
}

void upperdir_override_stat(const struct ovl *fs, int layer, const char *path, bool follow,
			    struct stat *st)
{
	if (!fs->wb || !fs->wb->read_override || layer != UPPERDIR_LAYER ||
	    !(S_ISDIR(st->st_mode) || S_ISREG(st->st_mode)))
		return;
	char v[64];
	ssize_t len = follow ? getxattr(path, OVERRIDE_STAT_XATTR, v, sizeof(v) - 1)
			     : lgetxattr(path, OVERRIDE_STAT_XATTR, v, sizeof(v) - 1);
	if (len <= 0)
		return;
	v[len] = '\0';
	unsigned uid, gid, mode;
	if (sscanf(v, "%u:%u:%o", &uid, &gid, &mode) != 3)
		return;
	st->st_uid = uid;
	st->st_gid = gid;
	st->st_mode = (st->st_mode & S_IFMT) | (mode & 07777);
}

void writeback_free(struct ovl *fs)
{
	struct writeback *wb = fs->wb;
	if (!wb)
		return;
	if (wb->work_fd >= 0)
		close(wb->work_fd);
	for (size_t i = 0; i < wb->ngrave; i++)
		free(wb->graveyard[i]);
	free(wb->graveyard);
	free(wb);
	fs->wb = NULL;
}

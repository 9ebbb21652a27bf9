/* file.c: open files — open, create, read, write, fallocate, lseek,
 * copy_file_range, release.
 *
 * A file whose data is still in a lower layer is read from a read-only fd
 * opened beneath its layer root; libfuse splices from it to /dev/fuse. Once
 * a file is opened for writing (or truncated) it has upper data: writes go
 * to the filestore, and reads take each byte from the filestore if it was
 * written, else (lazy copy-up, see cow.h) from that same lower fd.
 */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct open_file {
	struct handle_link link;        /* first: see handle_destroy */
	struct node *n;         /* pinned while open: open-then-unlink keeps it */
	int lower_fd;           /* -1 when the data was already all up at open */
	enum passthrough_io io; /* how the kernel serves it (passthrough.h) */
	bool writer;            /* counted in fs->open_writers */
};

static void handle_destroy(struct ovl *fs, struct handle_link *l);

static bool wants_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* Gives the file empty upper data without copying what O_TRUNC would discard. */
static int truncate_up(struct ovl *fs, struct node *n)
{
	int res = copy_up_meta(fs, n);
	if (res < 0)
		return res;
	pthread_mutex_lock(&n->lock);
	struct upper *u = n->upper;
	upper_start_empty(fs, u);
	u->st.st_size = 0;
	upper_touch(u, false, true, true);
	pthread_mutex_unlock(&n->lock);
	return 0;
}

/* An open handle counts on its node (nopen), among the writers the idle
 * write-back waits for (writeback_idle.c), and in the list unmount ends. */
static void handle_track(struct ovl *fs, struct open_file *h, int flags)
{
	pthread_mutex_lock(&h->n->lock);
	h->n->nopen++;
	pthread_mutex_unlock(&h->n->lock);
	if (wants_write(flags)) {
		h->writer = true;
		__atomic_add_fetch(&fs->open_writers, 1, __ATOMIC_RELAXED);
	}
	handles_add(fs, &h->link, handle_destroy);
}

/* Whether reads may still need the lower file: not up, or only partly. */
static bool reads_lower(struct node *n)
{
	pthread_mutex_lock(&n->lock);
	bool lower = !n->upper || upper_data_reads_lower(&n->upper->data);
	pthread_mutex_unlock(&n->lock);
	return lower;
}

static int handle_new(struct ovl *fs, struct node *n, int flags, struct open_file **out)
{
	struct open_file *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->n = n;
	h->lower_fd = -1;
	int res = 0;
	if (wants_write(flags)) {
		pthread_rwlock_wrlock(&fs->ns_lock);
		res = (flags & O_TRUNC) ? truncate_up(fs, n) : copy_up_data(fs, n);
		pthread_rwlock_unlock(&fs->ns_lock);
	}
	if (res == 0 && reads_lower(n)) {
		res = h->lower_fd = ovl_open_lower(fs, n, 0, O_RDONLY);
		/* A pool of workers (max_threads) serves the kernel's readahead
		 * requests in parallel, so the lower file sees them slightly out
		 * of order; its own readahead must not take that for random
		 * access (cold sequential reads ran about 1.5x faster with this). */
		if (res >= 0)
			posix_fadvise(res, 0, 0, POSIX_FADV_SEQUENTIAL);
	}
	if (res < 0) {
		free(h);
		return res;
	}
	handle_track(fs, h, flags);
	*out = h;
	return 0;
}

/* Returns whether the mode changed (UPPER_SYNC_KILLED): the kernel's copy
 * of the attributes is stale then. */
static bool handle_free(struct ovl *fs, struct open_file *h)
{
	struct node *n = h->n;
	handles_remove(fs, &h->link);
	if (h->lower_fd >= 0)
		close(h->lower_fd);
	pthread_mutex_lock(&n->lock);
	n->nopen--;
	/* the kernel wrote through the backing file: size and times follow */
	bool killed = n->upper && (upper_sync_file(n->upper, NULL) & UPPER_SYNC_KILLED);
	passthrough_release(fs, n, h->io, h->writer);
	upper_drop_unreachable_data(fs, n);
	pthread_mutex_unlock(&n->lock);
	node_put(fs, n);
	if (h->writer)
		__atomic_sub_fetch(&fs->open_writers, 1, __ATOMIC_RELAXED);
	free(h);
	return killed;
}

static void handle_destroy(struct ovl *fs, struct handle_link *l)
{
	(void)handle_free(fs, (struct open_file *)l);
}

static struct open_file *fh_of(const struct fuse_file_info *fi)
{
	return (struct open_file *)(uintptr_t)fi->fh;
}

static void set_open_flags(const struct ovl *fs, struct fuse_file_info *fi)
{
	/* Every change to a file goes through this daemon; unless others may
	 * change the lower layers (shared access), the kernel may keep cached
	 * pages across opens. */
	fi->keep_cache = !fs->cfg.shared_access;
}

/* An open for reading counts as a read for atime: the reads themselves
 * may all be served from the kernel's page cache and never reach us.
 * Returns whether atime moved. */
static bool opened_for_reading(struct ovl *fs, struct node *n, int flags)
{
	if ((flags & O_ACCMODE) == O_WRONLY || !n->upper)
		return false;
	pthread_mutex_lock(&n->lock);
	bool moved = upper_accessed(n->upper, fs->cfg.atime);
	pthread_mutex_unlock(&n->lock);
	return moved;
}

/* An open with O_TRUNC truncates: setuid/setgid go when the kernel asks
 * (FUSE_OPEN_KILL_SUIDGID), even if the file was empty, as in do_truncate.
 * Returns whether anything changed. */
static bool truncate_kills(struct ovl *fs, fuse_req_t req, struct node *n,
			   const struct fuse_file_info *fi)
{
	if (!killpriv_asked(fs, fi))
		return false;
	pthread_mutex_lock(&n->lock);
	bool killed = n->upper && killpriv(fs, req, n->upper, KILLPRIV_WRITE);
	pthread_mutex_unlock(&n->lock);
	return killed;
}

void ovl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	struct node *n = node_get_req(req, ino);
	if (!n)
		return;
	struct open_file *h;
	int res = handle_new(fs, n, fi->flags, &h);
	if (res < 0) {
		node_put(fs, n);
		fuse_reply_err(req, -res);
		return;
	}
	bool atime_moved = opened_for_reading(fs, n, fi->flags);
	bool killed = (fi->flags & O_TRUNC) && truncate_kills(fs, req, n, fi);
	fi->fh = (uint64_t)(uintptr_t)h;
	set_open_flags(fs, fi);
	h->io = passthrough_open(fs, n, h->lower_fd, fi);
	if (fuse_reply_open(req, fi) == -ENOENT)
		handle_free(fs, h);
	else if (atime_moved || killed) /* the kernel's copy of the attributes is stale */
		fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

void ovl_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	struct node *dir = node_get_req(req, parent);
	if (!dir)
		return;
	struct node *n = NULL;
	pthread_rwlock_wrlock(&fs->ns_lock);
	int res = upper_create(fs, req, dir, name, S_IFREG | (mode & 07777), 0, NULL, &n);
	pthread_rwlock_unlock(&fs->ns_lock);
	if (res == 0)
		ovl_dir_listing_changed(fs, dir);
	node_put(fs, dir);
	if (res < 0) {
		fuse_reply_err(req, -res);
		return;
	}
	/* No killpriv() for fi->kill_suidgid (O_CREAT|O_TRUNC): CREATE only
	 * ever makes a new file here (an existing one is EEXIST, and the
	 * kernel opens it with OPEN), and a file the open created is not
	 * truncated: it keeps the setuid/setgid bits it was made with. */
	struct open_file *h = calloc(1, sizeof(*h));
	if (!h) {
		node_forget(fs, n->ino, 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	node_pin(fs, n);
	h->n = n;
	h->lower_fd = -1;
	handle_track(fs, h, fi->flags);
	struct fuse_entry_param e;
	ovl_entry_fill(fs, n, &e, true);
	fi->fh = (uint64_t)(uintptr_t)h;
	set_open_flags(fs, fi);
	h->io = passthrough_open(fs, n, h->lower_fd, fi);
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		handle_free(fs, h);
		node_forget(fs, n->ino, 1);
	}
}

void ovl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct ovl *fs = ovl_of(req);
	struct open_file *h = fh_of(fi);
	struct node *n = h->n;

	kernel_io_reply_for(&h->link);
	pthread_mutex_lock(&n->lock);
	struct upper *u = n->upper;
	if (u)
		upper_accessed(u, fs->cfg.atime);
	if (u && upper_data_is_up(&u->data)) {
		struct fuse_bufvec *bv;
		int res = upper_data_read(fs->store, &u->data, h->lower_fd, (uint64_t)off, size, &bv);
		if (res < 0) {
			fuse_reply_err(req, -res);
		} else {
			/* still under n->lock: the store ranges must not be reused yet */
			fuse_reply_data(req, bv, FUSE_BUF_SPLICE_MOVE);
			free(bv);
		}
		pthread_mutex_unlock(&n->lock);
		return;
	}
	pthread_mutex_unlock(&n->lock);
	if (h->lower_fd < 0) {
		fuse_reply_err(req, EBADF);
		return;
	}
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = h->lower_fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

/* After a change to the data: size, mtime and ctime follow. n->lock held. */
static void data_changed(struct upper *u)
{
	u->st.st_size = (off_t)upper_data_size(&u->data);
	upper_touch(u, false, true, true);
}

void ovl_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off,
		   struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	struct open_file *h = fh_of(fi);
	struct node *n = h->n;
	kernel_io_reply_for(&h->link);
	pthread_mutex_lock(&n->lock);
	/* the data is up: it was when the file was opened for writing */
	struct upper *u = n->upper;
	ssize_t res = u ? upper_data_write(fs->store, &u->data, bufv, (uint64_t)off, h->lower_fd)
			: -EBADF;
	if (res > 0)
		data_changed(u);
	bool killed = res >= 0 && killpriv_asked(fs, fi) && killpriv(fs, req, u, KILLPRIV_WRITE);
	pthread_mutex_unlock(&n->lock);
	if (res < 0)
		fuse_reply_err(req, (int)-res);
	else
		fuse_reply_write(req, (size_t)res);
	/* The kernel refreshes size and times after a write, not the mode:
	 * without this it would go on seeing (and exec honouring) the bits. */
	if (killed)
		fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

void ovl_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
		   struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	struct node *n = fh_of(fi)->n;
	kernel_io_reply_for(&fh_of(fi)->link);
	if (offset < 0 || length <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* The memory a memfd store gets for it must be there: asking the
	 * kernel for more than that ends in the OOM killer, not in ENOSPC. */
	if (!fs->cfg.medium_dir && !(mode & FALLOC_FL_PUNCH_HOLE) &&
	    (uint64_t)length > memory_room()) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	pthread_mutex_lock(&n->lock);
	struct upper *u = n->upper;
	int res = u ? upper_data_fallocate(fs->store, &u->data, mode, (uint64_t)offset,
					   (uint64_t)length)
		    : -EBADF;
	if (res == 0)
		data_changed(u);
	bool killed = res == 0 && killpriv_unasked(fs, req, u);
	pthread_mutex_unlock(&n->lock);
	fuse_reply_err(req, -res);
	if (killed) /* as after a write */
		fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

void ovl_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
	(void)ino;
	struct open_file *h = fh_of(fi);
	struct node *n = h->n;
	kernel_io_reply_for(&h->link);
	if (whence != SEEK_DATA && whence != SEEK_HOLE) {
		fuse_reply_err(req, EINVAL); /* the kernel serves SET/CUR/END itself */
		return;
	}
	if (ovl_of(req)->writeback) {
		/* Dirty pages in the kernel are data this daemon has not seen yet:
		 * answering from the store could skip them. ENOSYS makes the
		 * kernel answer instead: the whole file is data, never wrong. */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	pthread_mutex_lock(&n->lock);
	int64_t res;
	if (n->upper && upper_data_is_up(&n->upper->data)) {
		res = upper_data_seek(ovl_of(req)->store, &n->upper->data, h->lower_fd, off, whence);
	} else if (h->lower_fd >= 0) {
		res = (res = lseek(h->lower_fd, off, whence)) < 0 ? -errno : res;
	} else {
		res = -EBADF;
	}
	pthread_mutex_unlock(&n->lock);
	if (res < 0)
		fuse_reply_err(req, (int)-res);
	else
		fuse_reply_lseek(req, (off_t)res);
}

void ovl_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			 struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			 struct fuse_file_info *fi_out, size_t len, int flags)
{
	(void)ino_in;
	struct ovl *fs = ovl_of(req);
	struct node *src = fh_of(fi_in)->n, *dst = fh_of(fi_out)->n;
	kernel_io_reply_for(&fh_of(fi_in)->link);
	kernel_io_reply_for(&fh_of(fi_out)->link);
	if (flags) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* Lock order by address, so two opposite copies cannot deadlock. */
	struct node *first = src < dst ? src : dst, *second = src < dst ? dst : src;
	pthread_mutex_lock(&first->lock);
	if (second != first)
		pthread_mutex_lock(&second->lock);
	ssize_t res;
	struct upper *out = dst->upper;
	if (!out)
		res = -EBADF;
	else if (!src->upper)
		res = -EOPNOTSUPP; /* the kernel falls back to splicing through us */
	else
		res = upper_data_copy_range(fs->store, &out->data, (uint64_t)off_out,
					    &src->upper->data, (uint64_t)off_in, len);
	if (res > 0)
		data_changed(out);
	bool killed = res >= 0 && killpriv_unasked(fs, req, out);
	if (second != first)
		pthread_mutex_unlock(&second->lock);
	pthread_mutex_unlock(&first->lock);
	if (res < 0)
		fuse_reply_err(req, (int)-res);
	else
		fuse_reply_write(req, (size_t)res);
	if (killed) /* as after a write */
		fuse_lowlevel_notify_inval_inode(fs->se, ino_out, -1, 0);
}

void ovl_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	/* The upper layer is memory: nothing to make durable unless it is
	 * written back to upperdir= (writeback.c), which then happens now. */
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, -writeback_fsync(ovl_of(req)));
}

void ovl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	kernel_io_last_request(&fh_of(fi)->link);
	bool killed = handle_free(fs, fh_of(fi));
	fuse_reply_err(req, 0);
	if (killed) /* as after a write (ovl_write_buf) */
		fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
}

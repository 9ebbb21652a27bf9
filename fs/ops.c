/* ops.c: the fuse_lowlevel_ops table and the small ops that only route. */
#include "memoverlay.h"

#include "libfuse_features.h"

#include <stdio.h>

/* 1 MiB, but on libfuse 3.17+ within what a pipe may hold. libfuse sizes
 * its splice pipe for a whole request, max_write plus a 4 KiB header page
 * (FUSE_BUFFER_HEADER_SIZE, in its private fuse_i.h), and growing a pipe
 * past /proc/sys/fs/pipe-max-size (1 MiB by default) takes CAP_SYS_RESOURCE,
 * which the daemon never keeps. libfuse 3.14 then gives up splicing and
 * reads; 3.17+ makes and destroys a pipe for every request instead. So
 * there the request is kept to the pipe limit, and splicing works. */
static unsigned max_write(void)
{
	unsigned want = 1024 * 1024;
#if FUSE_VERSION >= FUSE_MAKE_VERSION(3, 17)
	const unsigned header = 4096;
	unsigned long pipe_max = 1024 * 1024;
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "re");
	if (f) {
		if (fscanf(f, "%lu", &pipe_max) != 1)
			pipe_max = 1024 * 1024;
		fclose(f);
	}
	if (pipe_max >= 2 * header && pipe_max - header < want)
		want = (unsigned)(pipe_max - header);
#endif
	return want;
}

static void ovl_init(void *userdata, struct fuse_conn_info *conn)
{
	struct ovl *fs = userdata;
	/* Zero-copy data paths and fewer round trips where the kernel offers them. */
	unsigned want = FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
			FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO |
			FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ASYNC_READ | FUSE_CAP_AUTO_INVAL_DATA |
			FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
	conn->want |= conn->capable & want;
	/* Without it the kernel clears setuid/setgid on write, truncate and
	 * chown itself, through setattr; with it, that would be ours to do,
	 * on every request and without being told whether the caller has
	 * CAP_FSETID. */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
#ifdef HAVE_FUSE_KILLPRIV_V2
	/* With V2 the kernel says which requests must clear them (killpriv.c)
	 * and stops asking for security.capability before every write(2). */
	if (conn->capable & FUSE_CAP_HANDLE_KILLPRIV_V2) {
		conn->want |= FUSE_CAP_HANDLE_KILLPRIV_V2;
		fs->killpriv_v2 = true;
	}
#endif
	/* With exclusive access nobody but the kernel changes files behind
	 * this mount, so the kernel may cache writes and write back later:
	 * small writes cost no round trip each. Past the size limit a cached
	 * write then fails at writeback, and fsync/close report ENOSPC.
	 * cfg.writeback says whether to (options.c, config_finish: not with
	 * shared access, nor where the limit is small). */
	bool passthrough = passthrough_init(fs, conn); /* not with the write cache */
	if (!passthrough && fs->cfg.writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
		fs->writeback = true;
	}
#ifdef HAVE_FUSE_NO_INTERRUPT
	/* No request here waits for anything a signal could cut short, so
	 * FUSE_INTERRUPT is answered ENOSYS and the kernel sends no more.
	 * libfuse 3.18 keeps an interrupt for a request served through the
	 * io_uring (one it cannot find) until the end, and leaks it there. */
	conn->no_interrupt = 1;
#endif
	/* Bigger requests: fewer round trips for sequential I/O. */
	conn->max_write = max_write();
	conn->max_readahead = 1024 * 1024;
}

static void ovl_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(ovl_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void ovl_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct ovl *fs = ovl_of(req);
	for (size_t i = 0; i < count; i++)
		node_forget(fs, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
	node_trim_memory(fs);
}

static void ovl_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	ovl_fsync(req, ino, datasync, fi);
}

/* Every handler timed for `memoverlay-ctl stats` (stats.h): the time the
 * daemon spends on a request, its reply included. fs is read before the
 * op runs: the op's reply frees req. */
#define TIMED(op, id, params, args)                                   \
	static void timed_##op params                                 \
	{                                                             \
		struct ovl *fs_ = fuse_req_userdata(req);             \
		uint64_t t0_ = stats_now();                           \
		op args;                                              \
		stats_record(&fs_->stats, id, t0_);                   \
	}

static void ovl_init_timed(void *userdata, struct fuse_conn_info *conn)
{
	uint64_t t0 = stats_now();
	ovl_init(userdata, conn);
	stats_record(&((struct ovl *)userdata)->stats, SOP_INIT, t0);
}

TIMED(ovl_lookup, SOP_LOOKUP, (fuse_req_t req, fuse_ino_t parent, const char *name),
      (req, parent, name))
TIMED(ovl_forget, SOP_FORGET, (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup),
      (req, ino, nlookup))
TIMED(ovl_forget_multi, SOP_BATCH_FORGET,
      (fuse_req_t req, size_t count, struct fuse_forget_data *forgets), (req, count, forgets))
TIMED(ovl_getattr, SOP_GETATTR, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
      (req, ino, fi))
TIMED(ovl_readlink, SOP_READLINK, (fuse_req_t req, fuse_ino_t ino), (req, ino))
TIMED(ovl_open, SOP_OPEN, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
      (req, ino, fi))
TIMED(ovl_read, SOP_READ,
      (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
      (req, ino, size, off, fi))
TIMED(ovl_release, SOP_RELEASE, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
      (req, ino, fi))
TIMED(ovl_opendir, SOP_OPENDIR, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
      (req, ino, fi))
TIMED(ovl_readdir, SOP_READDIR,
      (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
      (req, ino, size, off, fi))
TIMED(ovl_readdirplus, SOP_READDIRPLUS,
      (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
      (req, ino, size, off, fi))
TIMED(ovl_releasedir, SOP_RELEASEDIR,
      (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
TIMED(ovl_statfs, SOP_STATFS, (fuse_req_t req, fuse_ino_t ino), (req, ino))
TIMED(ovl_getxattr, SOP_GETXATTR,
      (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size), (req, ino, name, size))
TIMED(ovl_listxattr, SOP_LISTXATTR, (fuse_req_t req, fuse_ino_t ino, size_t size),
      (req, ino, size))
TIMED(ovl_access, SOP_ACCESS, (fuse_req_t req, fuse_ino_t ino, int mask), (req, ino, mask))
TIMED(ovl_setattr, SOP_SETATTR,
      (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi),
      (req, ino, attr, to_set, fi))
TIMED(ovl_setxattr, SOP_SETXATTR,
      (fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
       int flags), (req, ino, name, value, size, flags))
TIMED(ovl_removexattr, SOP_REMOVEXATTR, (fuse_req_t req, fuse_ino_t ino, const char *name),
      (req, ino, name))
TIMED(ovl_mknod, SOP_MKNOD,
      (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev),
      (req, parent, name, mode, rdev))
TIMED(ovl_mkdir, SOP_MKDIR, (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode),
      (req, parent, name, mode))
TIMED(ovl_symlink, SOP_SYMLINK,
      (fuse_req_t req, const char *link, fuse_ino_t parent, const char *name),
      (req, link, parent, name))
TIMED(ovl_link, SOP_LINK,
      (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname),
      (req, ino, newparent, newname))
TIMED(ovl_unlink, SOP_UNLINK, (fuse_req_t req, fuse_ino_t parent, const char *name),
      (req, parent, name))
TIMED(ovl_rmdir, SOP_RMDIR, (fuse_req_t req, fuse_ino_t parent, const char *name),
      (req, parent, name))
TIMED(ovl_create, SOP_CREATE,
      (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
       struct fuse_file_info *fi), (req, parent, name, mode, fi))
TIMED(ovl_write_buf, SOP_WRITE,
      (fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off,
       struct fuse_file_info *fi), (req, ino, bufv, off, fi))
TIMED(ovl_fallocate, SOP_FALLOCATE,
      (fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
       struct fuse_file_info *fi), (req, ino, mode, offset, length, fi))
TIMED(ovl_lseek, SOP_LSEEK,
      (fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi),
      (req, ino, off, whence, fi))
TIMED(ovl_copy_file_range, SOP_COPY_FILE_RANGE,
      (fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
       fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len, int flags),
      (req, ino_in, off_in, fi_in, ino_out, off_out, fi_out, len, flags))
TIMED(ovl_fsync, SOP_FSYNC,
      (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi),
      (req, ino, datasync, fi))
TIMED(ovl_fsyncdir, SOP_FSYNCDIR,
      (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi),
      (req, ino, datasync, fi))

/* The kernel sends RENAME for rename(2) and RENAME2 (flags) for
 * renameat2 with flags; libfuse gives both to one handler. */
static void timed_ovl_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			     fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct ovl *fs = fuse_req_userdata(req);
	uint64_t t0 = stats_now();
	ovl_rename(req, parent, name, newparent, newname, flags);
	stats_record(&fs->stats, flags ? SOP_RENAME2 : SOP_RENAME, t0);
}

const struct fuse_lowlevel_ops ovl_ops = {
	.init = ovl_init_timed,
	.lookup = timed_ovl_lookup,
	.forget = timed_ovl_forget,
	.forget_multi = timed_ovl_forget_multi,
	.getattr = timed_ovl_getattr,
	.readlink = timed_ovl_readlink,
	.open = timed_ovl_open,
	.read = timed_ovl_read,
	.release = timed_ovl_release,
	.opendir = timed_ovl_opendir,
	.readdir = timed_ovl_readdir,
	.readdirplus = timed_ovl_readdirplus,
	.releasedir = timed_ovl_releasedir,
	.statfs = timed_ovl_statfs,
	.getxattr = timed_ovl_getxattr,
	.listxattr = timed_ovl_listxattr,
	.access = timed_ovl_access,
	.setattr = timed_ovl_setattr,
	.setxattr = timed_ovl_setxattr,
	.removexattr = timed_ovl_removexattr,
	.mknod = timed_ovl_mknod,
	.mkdir = timed_ovl_mkdir,
	.symlink = timed_ovl_symlink,
	.link = timed_ovl_link,
	.unlink = timed_ovl_unlink,
	.rmdir = timed_ovl_rmdir,
	.rename = timed_ovl_rename,
	.create = timed_ovl_create,
	.write_buf = timed_ovl_write_buf,
	.fallocate = timed_ovl_fallocate,
	.lseek = timed_ovl_lseek,
	.copy_file_range = timed_ovl_copy_file_range,
	.fsync = timed_ovl_fsync,
	.fsyncdir = timed_ovl_fsyncdir,
	/* no .flush: nothing to do at close, and without it the kernel stops
	 * sending FLUSH, a synchronous round trip on every close(2) */
};

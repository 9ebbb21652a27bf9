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

const struct fuse_lowlevel_ops ovl_ops = {
	.init = ovl_init,
	.lookup = ovl_lookup,
	.forget = ovl_forget,
	.forget_multi = ovl_forget_multi,
	.getattr = ovl_getattr,
	.readlink = ovl_readlink,
	.open = ovl_open,
	.read = ovl_read,
	.release = ovl_release,
	.opendir = ovl_opendir,
	.readdir = ovl_readdir,
	.readdirplus = ovl_readdirplus,
	.releasedir = ovl_releasedir,
	.statfs = ovl_statfs,
	.getxattr = ovl_getxattr,
	.listxattr = ovl_listxattr,
	.access = ovl_access,
	.setattr = ovl_setattr,
	.setxattr = ovl_setxattr,
	.removexattr = ovl_removexattr,
	.mknod = ovl_mknod,
	.mkdir = ovl_mkdir,
	.symlink = ovl_symlink,
	.link = ovl_link,
	.unlink = ovl_unlink,
	.rmdir = ovl_rmdir,
	.rename = ovl_rename,
	.create = ovl_create,
	.write_buf = ovl_write_buf,
	.fallocate = ovl_fallocate,
	.lseek = ovl_lseek,
	.copy_file_range = ovl_copy_file_range,
	.fsync = ovl_fsync,
	.fsyncdir = ovl_fsyncdir,
	/* no .flush: nothing to do at close, and without it the kernel stops
	 * sending FLUSH, a synchronous round trip on every close(2) */
};

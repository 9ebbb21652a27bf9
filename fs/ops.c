/* ops.c: the fuse_lowlevel_ops table and the small ops that only route. */
#include "memoverlay.h"

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
	 * chown itself, through setattr; with it, that would be ours to do. */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
	/* With exclusive access nobody but the kernel changes files behind
	 * this mount, so the kernel may cache writes and write back later:
	 * small writes cost no round trip each. Past the size limit a cached
	 * write then fails at writeback, and fsync/close report ENOSPC.
	 * cfg.writeback says whether to (options.c, config_finish: not with
	 * shared access, nor where the limit is small). */
	if (fs->cfg.writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
		fs->writeback = true;
	}
	/* Bigger requests: fewer round trips for sequential I/O. */
	conn->max_write = 1024 * 1024;
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

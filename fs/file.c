/* file.c: open, read and release of regular files.
 *
 * A lower file is opened read-only beneath its layer root and its fd is the
 * file handle; reads hand that fd to libfuse, which splices the data from the
 * lower file to /dev/fuse without copying it through the daemon.
 */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

static bool wants_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

void ovl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl *fs = ovl_of(req);
	struct node *n = node_get(fs, ino);
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	int fd;
	if (wants_write(fi->flags))
		fd = -EROFS; /* the upper layer takes writes; until it exists, nothing does */
	else
		fd = ovl_open_lower(fs, n, 0, O_RDONLY);
	node_put(fs, n);
	if (fd < 0) {
		fuse_reply_err(req, -fd);
		return;
	}
	fi->fh = (uint64_t)fd;
	/* Lower layers do not change under a mount (as with kernel overlayfs),
	 * so the kernel may keep cached pages across opens. */
	fi->keep_cache = 1;
	if (fuse_reply_open(req, fi) == -ENOENT)
		close(fd);
}

void ovl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = (int)fi->fh;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

void ovl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	close((int)fi->fh);
	fuse_reply_err(req, 0);
}

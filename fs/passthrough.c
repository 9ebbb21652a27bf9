/* SPDX-License-Identifier: Apache-2.0 */
/* passthrough.c: FUSE passthrough of lower files on read-only mounts, and
 * of upper files in files of their own with -o passthrough=upper (see
 * passthrough.h).
 *
 * What the kernel (Linux 6.9 to 6.18 at least) allows, and so what is
 * backed:
 * - A backing file is reopened by the kernel with the CALLER's open flags
 *   and this daemon's credentials: an O_RDWR, O_WRONLY or O_APPEND open
 *   backed by a lower file would write into it, even at mode 0444, as
 *   root. So a lower file only ever backs a read-only open (no O_TRUNC).
 * - While an inode has an open backed by a file, the kernel lets every
 *   other open of it be only one backed by that same file: any other open
 *   fails with EIO (fs/fuse/iomode.c, fuse_file_io_open; measured here:
 *   O_RDONLY backed, then O_RDWR, even with FOPEN_DIRECT_IO, gets EIO).
 *   On a writable mount a writer may open any file that a reader holds
 *   open, and its open can be backed neither by the lower file (it would
 *   write it) nor by another file (EBUSY, so EIO). So lower files back
 *   opens only on read-only mounts, where no writable open ever comes:
 *   there every regular file's data is wholly lower, all its opens are
 *   read-only, and all share its one backing file. (A `mount -o
 *   remount,rw` of such a mount lets writers in: a writable open of a file
 *   that is open read-only then fails with EIO, from the kernel.)
 * - On a writable mount lower files back nothing, and by default nothing
 *   is backed: the connection keeps the write cache, which the kernel
 *   refuses together with passthrough. The filestore, one memfd carved
 *   into extents, cannot back upper files, since passthrough maps a whole
 *   file at the same offsets. With -o passthrough=upper an upper file's
 *   data is a file of its own (upper_files.h), which backs every open of
 *   it, for writing too, once wholly up and free of setuid, setgid and
 *   capabilities (whose clearing on write is the daemon's, killpriv.c);
 *   the connection then has no write cache. Data never changes store, so
 *   a backing file never goes stale; what the kernel writes there the
 *   daemon reads back from the file (upper_sync_file).
 * - Registering a backing file (FUSE_DEV_IOC_BACKING_OPEN) takes
 *   CAP_SYS_ADMIN in the initial user namespace, checked at every
 *   registration, so after the privilege drop too: only a root daemon,
 *   which keeps it there anyway (privileges.c). Plain users and user
 *   namespaces read through the daemon as before.
 *
 * Coherency: on a read-only mount nothing changes a file, so a backed open
 * never goes stale (lower layers must not change under the mount, as
 * ever; with shared access the kernel reads the lower file as it is now).
 * Atime: the daemon applies relatime at open, as before (file.c); reads
 * through the backing file never reach it.
 */
#include "memoverlay.h"
#include "hints.h"
#include "libfuse_features.h"
#include "passthrough.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <unistd.h>

bool passthrough_allowed(void)
{
	cap_t caps = cap_get_proc();
	if (!caps)
		return false;
	cap_flag_value_t admin = CAP_CLEAR;
	cap_get_flag(caps, CAP_SYS_ADMIN, CAP_EFFECTIVE, &admin);
	cap_free(caps);
	return admin == CAP_SET && in_initial_user_ns();
}

int passthrough_check_upper(struct config *cfg)
{
	if (!cfg->passthrough_upper || (cfg->flags & HINTS_OPT_RDONLY))
		return 0;
#ifdef HAVE_FUSE_PASSTHROUGH
	if (geteuid() == 0 && in_initial_user_ns())
		return 0;
	/* Not an error, and not worth a line on stderr: runtimes pass one set
	 * of options to rootful and rootless mounts alike, and the mount is
	 * then what it is without it (as passthrough=auto; memoverlay-ctl
	 * stats says which). */
	cfg->passthrough_upper = false;
	return 0;
#else
	fprintf(stderr, "memoverlay: passthrough=upper: this build's libfuse (%s) has no FUSE "
		"passthrough (3.17+ needed); use passthrough=auto\n", fuse_pkgversion());
#endif
	return -1;
}

#ifdef HAVE_FUSE_PASSTHROUGH
static uint64_t files_used(void *arg)
{
	return upper_files_used(arg);
}

static int files_fit(void *arg, uint64_t room)
{
	return upper_files_fit(arg, room);
}

static const struct filestore_neighbour files_neighbour = {
	.used = files_used,
	.fit = files_fit,
};

/* passthrough=upper on a writable mount: upper files get files of their
 * own that back their opens, if the kernel lets us. */
static bool init_upper(struct ovl *fs, struct fuse_conn_info *conn)
{
	if (!fs->files)
		return false;
	if (!(conn->capable & FUSE_CAP_PASSTHROUGH) || !fs->backing_allowed) {
		fprintf(stderr, "memoverlay: passthrough=upper: the kernel offers no FUSE "
			"passthrough here; upper files stay in the daemon's store\n");
		upper_files_destroy(fs->files);
		fs->files = NULL;
		return false;
	}
	filestore_share_limit(fs->store, &files_neighbour, fs->files);
	return true;
}
#endif

bool passthrough_init(struct ovl *fs, struct fuse_conn_info *conn)
{
	__atomic_store_n(&fs->passthrough, false, __ATOMIC_RELAXED);
#ifdef HAVE_FUSE_PASSTHROUGH
	bool upper = init_upper(fs, conn);
	if (!fs->cfg.passthrough || !fs->backing_allowed ||
	    (!(fs->cfg.flags & HINTS_OPT_RDONLY) && !upper) ||
	    !(conn->capable & FUSE_CAP_PASSTHROUGH))
		return false;
	conn->want |= FUSE_CAP_PASSTHROUGH;
	/* The default: lower files on a stacked filesystem (overlayfs, another
	 * passthrough FUSE) cannot back opens (ELOOP: read through us), and
	 * this mount can be a layer of an overlayfs. */
	conn->max_backing_stack_depth = FUSE_BACKING_STACKED_UNDER;
	__atomic_store_n(&fs->passthrough, true, __ATOMIC_RELAXED);
	return true;
#else
	(void)conn;
	return false;
#endif
}

#ifdef HAVE_FUSE_PASSTHROUGH
/* Registers fd as a backing file: its id, or 0 (read through the daemon). */
static int backing_open(struct ovl *fs, int fd)
{
	struct fuse_backing_map map = { .fd = fd };
	int id = ioctl(fuse_session_fd(fs->se), FUSE_DEV_IOC_BACKING_OPEN, &map);
	if (id > 0)
		return id;
	if (errno == EPERM) {
		/* the kernel says no to this daemon: stop asking */
		fprintf(stderr, "memoverlay: passthrough refused by the kernel (%s); "
			"reading through the daemon\n", strerror(errno));
		__atomic_store_n(&fs->passthrough, false, __ATOMIC_RELAXED);
	}
	/* ELOOP (a stacked lower filesystem), EMFILE, ...: this file is read
	 * through the daemon; the next may work */
	return 0;
}

/* Its data is in a file of its own (passthrough=upper): that file backs
 * every open of it, for reading and writing alike. */
static int upper_file_backing(const struct node *n, const struct passthrough_node *pt)
{
	const struct upper *u = n->upper;
	if (!u || !S_ISREG(n->type) || !upper_data_backable(&u->data))
		return -1;
	/* once one open is backed the next must be too (the kernel's rule);
	 * a file a write must clear is not backed, so that its writes reach
	 * killpriv.c */
	if (!pt->nbacked && killpriv_needed(u))
		return -1;
	return upper_data_file_open(&u->data, O_RDWR);
}

static bool lower_read_only_open(const struct node *n, int lower_fd, int flags)
{
	if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) || lower_fd < 0 ||
	    !S_ISREG(n->type))
		return false;
	/* metadata-only copy-up: the bytes are still the lower file's */
	return !n->upper || !upper_data_is_up(&n->upper->data);
}

#endif

enum passthrough_io passthrough_open(struct ovl *fs, struct node *n, int lower_fd,
				     struct fuse_file_info *fi)
{
	enum passthrough_io io = PT_IO_CACHED;
#ifdef HAVE_FUSE_PASSTHROUGH
	pthread_mutex_lock(&n->lock);
	struct passthrough_node *pt = &n->pt;
	/* One backing file per inode while it has backed opens (the kernel
	 * refuses a second one), and none while it has opens through its
	 * page cache (one whose backing file could not be registered). */
	int file_fd = -1;
	if (__atomic_load_n(&fs->passthrough, __ATOMIC_RELAXED) && pt->ncached == 0 &&
	    (((fs->cfg.flags & HINTS_OPT_RDONLY) && lower_read_only_open(n, lower_fd, fi->flags)) ||
	     (file_fd = upper_file_backing(n, pt)) >= 0)) {
		if (!pt->nbacked)
			pt->backing_id = backing_open(fs, file_fd >= 0 ? file_fd : lower_fd);
		/* the kernel holds the file from here: no fd of ours per file */
		if (file_fd >= 0)
			close(file_fd);
		if (pt->backing_id > 0) {
			fi->backing_id = pt->backing_id;
			fi->keep_cache = 0; /* the kernel refuses it with a backing file */
			pt->nbacked++;
			/* as file.c counts writers (wants_write) */
			if (n->upper && ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))) {
				pt->nbacked_writers++;
				/* what it writes reaches the tmpfs file alone */
				n->upper->wb_dirty = n->upper->shown_changed = true;
			}
			io = PT_IO_BACKED;
		}
	}
	/* Beside backed opens the kernel fails this one (EIO): only after a
	 * remount,rw (see the top). */
	if (io == PT_IO_CACHED)
		pt->ncached++;
	pthread_mutex_unlock(&n->lock);
#else
	(void)fs;
	(void)n;
	(void)lower_fd;
	(void)fi;
#endif
	return io;
}

void passthrough_release(struct ovl *fs, struct node *n, enum passthrough_io io, bool writer)
{
	struct passthrough_node *pt = &n->pt;
	if (io == PT_IO_BACKED && writer && pt->nbacked_writers)
		pt->nbacked_writers--;
	if (io == PT_IO_CACHED && pt->ncached) {
		pt->ncached--;
	} else if (io == PT_IO_BACKED && pt->nbacked && --pt->nbacked == 0) {
		/* the kernel keeps the backing file while the inode still uses it */
		uint32_t id = (uint32_t)pt->backing_id;
		(void)ioctl(fuse_session_fd(fs->se), FUSE_DEV_IOC_BACKING_CLOSE, &id);
		pt->backing_id = 0;
		/* writes reach the daemon again, which clears what they must */
		if (n->upper)
			n->upper->kill_on_write = false;
	}
}

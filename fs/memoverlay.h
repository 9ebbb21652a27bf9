/* memoverlay: private header shared by the files of the daemon.
 *
 * Ownership, in one paragraph: `struct ovl` owns the layers, the node table
 * and the upper store. The node table owns every `struct node`; a node lives
 * while the kernel holds a lookup on it (nlookup) or something in the daemon
 * pins it (pins: an upper directory entry naming it, an open handle). FUSE
 * ops borrow nodes through node_get()/node_put() and never free them.
 */
#ifndef MEMOVERLAY_H
#define MEMOVERLAY_H

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/capability.h>
#include <sys/stat.h>
#include <sys/types.h>

/* ---- config.h: struct config, parsed once (options.c, hints_apply.c) ---- */
#include "config.h"

#include "layer.h"

#include "kernel_io.h"
#include "upper.h"
#include "writeback.h"
#include "stats.h"

#include "acl.h"

/* ---- caller.c ---- */
/* The kernel's in_group_or_capable() for req's caller: its fsgid (from
 * FUSE) or a supplementary group is gid, or it has CAP_FSETID (both from
 * its /proc status; unreadable: no). */
bool caller_in_group_or_capable(fuse_req_t req, gid_t gid);
/* Whether req's caller has capability CAP in effect (unreadable: no). */
bool caller_capable(fuse_req_t req, int cap);

/* ---- killpriv.c: setuid, setgid and capabilities on write and chown ---- */
enum killpriv_cause {
	KILLPRIV_WRITE,         /* write, truncate, open with O_TRUNC */
	KILLPRIV_CHOWN,         /* chown or chgrp, whoever asks */
};
/* Whether the kernel asked this open or write to clear setuid/setgid:
 * KILLPRIV_V2 was negotiated and the caller lacks CAP_FSETID. */
bool killpriv_asked(const struct ovl *fs, const struct fuse_file_info *fi);
/* Clears what the kernel would on a local file: S_ISUID, S_ISGID of a
 * group-executable file or of one whose group req's caller is neither in
 * nor has CAP_FSETID for, security.capability; ctime moves if anything
 * went. For a chown, call it
 * before the owner changes. Caller holds the node's lock; only for what
 * the kernel left to us (KILLPRIV_V2). Returns whether anything changed. */
bool killpriv(struct ovl *fs, fuse_req_t req, struct upper *u, enum killpriv_cause why);
/* For a change of data the kernel sends without saying (fallocate,
 * copy_file_range): killpriv() if the caller lacks CAP_FSETID, which only
 * a file with setuid or setgid makes us look up. Caller holds the node's
 * lock. Returns whether anything changed. */
bool killpriv_unasked(struct ovl *fs, fuse_req_t req, struct upper *u);
/* For a write the kernel made itself through a backing file
 * (passthrough=upper), whoever made it: killpriv()'s clearing for a writer
 * in the file's group without CAP_FSETID, but the times stay the kernel's.
 * Caller holds the node's lock. Returns whether anything changed. */
bool killpriv_kernel_write(struct upper *u);
/* Whether u has what a write must clear (setuid, setgid, capabilities). */
bool killpriv_needed(const struct upper *u);

/* ---- copy_up.c ---- */

/* Gives n (and every parent up to the root) an upper copy of its metadata.
 * Caller holds ns_lock for writing. */
int copy_up_meta(struct ovl *fs, struct node *n);
/* The same, but n is no directory's entry: for a lower hard link one of
 * whose names goes (unlink, renamed over), to count the names it has
 * left. Those still find it by st_ino (the node table); what they show is
 * unchanged, so an upper directory written back gets only the whiteout
 * (writeback.c), as from kernel overlayfs. */
int copy_up_meta_unnamed(struct ovl *fs, struct node *n);
/* Also gives the file upper data (see upper_data.h): lazily, or copied
 * whole (in the kernel) when the lower layers are shared. Caller holds
 * ns_lock for writing. */
int copy_up_data(struct ovl *fs, struct node *n);

#include "node.h"

/* ---- namei.c: lookup across layers ---- */

void ovl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);

/* Looks `name` up in directory node `dir`; on success returns a node with one
 * more lookup (when `lookup`) or one pin (when not), and fills st. */
int ovl_lookup_name(struct ovl *fs, struct node *dir, const char *name,
		    bool lookup, struct node **out, struct stat *st);
/* The lower layers' answer for name in dir: the top object's stat and the
 * layers that make it (see namei.c). -ENOENT if absent or whited out. */
int lower_find(struct ovl *fs, const struct node *dir, const char *name,
	       struct stat *top, uint16_t *found, uint16_t *nfound);
/* The entry reply for n: ino and cache timeouts, and its attributes when
 * getattr (else e->attr is the caller's). */
void ovl_entry_fill(struct ovl *fs, struct node *n, struct fuse_entry_param *e, bool getattr);

/* ---- readdir.c ---- */
void ovl_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void ovl_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
/* Calls each() for every entry of the merged directory but "." and "..",
 * in the order readdir gives them, while each() returns 0. Caller holds
 * ns_lock (either mode). */
int ovl_dir_list(struct ovl *fs, struct node *dir,
		 int (*each)(const char *name, uint64_t ino, unsigned char type, void *arg),
		 void *arg);
/* Names gathered by ovl_dir_list with name_list_add as each() (ino and
 * type unused): copies, in v[0..n), freed with name_list_free. */
struct name_list {
	char **v;
	size_t n, cap;
};
int name_list_add(const char *name, uint64_t ino, unsigned char type, void *list);
void name_list_free(struct name_list *l);
/* 0 if the merged directory has no entries, -ENOTEMPTY if it has. */
int ovl_dir_is_empty(struct ovl *fs, struct node *dir);
void ovl_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- dir.c: namespace changes ---- */
/* A directory's entries changed: the kernel's cached listing must go. */
void ovl_dir_listing_changed(struct ovl *fs, struct node *dir);
int upper_create(struct ovl *fs, fuse_req_t req, struct node *dir, const char *name,
		 mode_t mode, dev_t rdev, const char *link, struct node **out);
void ovl_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void ovl_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void ovl_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void ovl_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void ovl_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void ovl_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void ovl_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		const char *newname, unsigned int flags);

/* ---- inode.c: attributes, xattrs, access ---- */
/* Attributes of a node as the user sees them. */
int ovl_getattr_node(struct ovl *fs, struct node *n, struct stat *st);
/* fstat of n's top lower object, with the owner and mode an upper
 * directory keeps in user.containers.override_stat applied (writeback.h);
 * no id mapping. */
int ovl_stat_lower(struct ovl *fs, const struct node *n, struct stat *st);
/* A merged directory shows one link, as in kernel overlayfs. */
void ovl_fix_dir_nlink(const struct node *n, struct stat *st);
void ovl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		 struct fuse_file_info *fi);
void ovl_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
		  size_t size, int flags);
void ovl_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void ovl_readlink(fuse_req_t req, fuse_ino_t ino);
void ovl_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void ovl_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void ovl_access(fuse_req_t req, fuse_ino_t ino, int mask);

/* ---- file.c: open and read ---- */
void ovl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void ovl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		struct fuse_file_info *fi);
void ovl_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off,
		   struct fuse_file_info *fi);
void ovl_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
		   struct fuse_file_info *fi);
void ovl_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);
void ovl_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			 struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			 struct fuse_file_info *fi_out, size_t len, int flags);
void ovl_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);


#include "memory_budget.h"

/* ---- bdi.c ---- */
/* As root of the initial user namespace, lifts the FUSE mount's dirty page
 * limits (max_ratio, strict_limit) just after mounting; otherwise nothing. */
void bdi_tune(const struct config *cfg);

/* ---- privileges.c ---- */
bool in_initial_user_ns(void);
/* Keeps only KEEP in the permitted and effective sets (those held), drops
 * the rest from the bounding set where allowed, clears the ambient set. */
int keep_only_caps(const cap_value_t *keep, size_t nkeep);
/* Drops every capability but those needed to read the layers (and, with
 * SELF_UNMOUNT, to unmount; with WRITE_UPPER, to write upperdir=), sets
 * no_new_privs, raises RLIMIT_NOFILE. */
int drop_privileges(bool self_unmount, bool write_upper);

/* ---- unmounter.c ---- */
/* When the daemon cannot unmount itself (plain user, root of a user
 * namespace): forks a child that unmounts when the daemon ends, however it
 * ends (see the file for why). unmounter_finish() lets it unmount now and
 * waits for it. */
int unmounter_start(struct ovl *fs);
void unmounter_finish(struct ovl *fs);

/* ---- handles.c: every file and directory handle the kernel holds ---- */
/* Embedded in each handle, so that the ones the kernel never released
 * (unmounted with files open) are freed at shutdown. */
struct handle_link {
	struct handle_link *prev, *next;
	void (*destroy)(struct ovl *fs, struct handle_link *l);
#ifdef KERNEL_IO_ANNOTATE
	unsigned replies_due;   /* kernel_io.c: requests on it not answered yet */
#endif
};
void handles_add(struct ovl *fs, struct handle_link *l,
		 void (*destroy)(struct ovl *fs, struct handle_link *l));
void handles_remove(struct ovl *fs, struct handle_link *l);
void handles_destroy_all(struct ovl *fs);

/* ---- super.c: the mount as a whole ---- */
/* Makes the lower layers from the ones config_parse() resolved and opened;
 * prints one line and returns -1 on failure. */
int open_layers(struct ovl *fs);
void close_layers(struct ovl *fs);
/* The root node: merges every layer, shows the top lower root's owner and
 * mode, and is upper from the start. 0 or -errno. */
int make_root(struct ovl *fs);
void ovl_statfs(fuse_req_t req, fuse_ino_t ino);
/* Prints "memoverlay: WHAT 'PATH': strerror(err)"; returns -1. */
int report_path_error(const char *what, const char *path, int err);

/* ---- ops.c ---- */
extern const struct fuse_lowlevel_ops ovl_ops;

/* ---- the filesystem ---- */

/* Lock order, outer to inner: a thread holding one of these takes only
 * locks further down the list, never one above it.
 *
 *   dir_handle.lock  (readdir.c) one directory handle's snapshot
 *   ns_lock          the namespace: read to look up and list, write to change
 *   node.lock        one node's upper copy; two at once only in
 *                    copy_file_range, the lower address first
 *   table_lock       the node table: nlookup, pins, freeing nodes
 *   ino_lock         inode numbering
 *   filestore.lock   (filestore.c) the store's space; nothing is taken under it
 *   handles_lock     taken alone: nothing held, nothing taken under it
 *
 * What nests today: ns_lock → node.lock (copy-up, setattr, xattrs,
 * getattr); ns_lock → table_lock (lookups take a reference; dirmap_set
 * and node_put pin and unpin children); ns_lock → ino_lock (numbering in
 * lookup, readdir and create); node.lock → filestore.lock (fdata_* calls
 * that take or give back store space); table_lock → filestore.lock
 * (node_put freeing a node's data). dir_handle.lock → all of ns_lock,
 * node.lock, table_lock, ino_lock (see below).
 * node.lock and table_lock never nest: node_put and friends come after
 * node.lock is dropped.
 *
 * dir_handle.lock is taken before ns_lock, the other way round from the
 * rule that an op takes ns_lock first: do_readdir holds it across the
 * snapshot (ns_lock for reading) and, for readdirplus, across a lookup per
 * entry. That is safe because dir_handle.lock is taken only there, as the
 * first lock of a READDIR(PLUS) request, and never while any other lock is
 * held: it is simply the outermost lock, and no cycle can go through it.
 *
 * No lock is held across a notification to the kernel
 * (ovl_dir_listing_changed): the kernel may be waiting for a READDIR of
 * ours, which needs ns_lock and the handle's lock. */
struct ovl {
	struct config cfg;
	struct layer *layers;
	int nlayers;
	struct node *root;

	/* Node table: open hashing keyed by nodeid. */
	pthread_mutex_t table_lock;     /* lock order: above */
	struct node **buckets;
	size_t nbuckets;
	size_t nnodes;
	size_t freed_since_trim;

	/* Inode numbering (see ino_from_lower). */
	pthread_mutex_t ino_lock;       /* lock order: above */
	dev_t *devs;
	size_t ndevs;
	uint64_t next_upper_ino;
	struct big_ino *big;    /* lower inos too large to compose */

	/* Namespace lock: read for lookups and reads, write for changes.
	 * It guards the upper directories' entries (dirmap) and copy-up.
	 * Lock order: above. */
	pthread_rwlock_t ns_lock;

	struct filestore *store;
	struct upper_files *files;      /* passthrough=upper: files that back opens
					 * (upper_files.h); NULL: the filestore alone */
	struct fuse_session *se;
	pthread_mutex_t handles_lock;   /* taken alone (lock order: above) */
	struct handle_link handles;     /* list head */
	pid_t unmounter_pid;    /* 0: the daemon unmounts itself */
	int unmounter_fd;       /* its pipe: closing it says "unmount now" */
	bool writeback;         /* the kernel caches writes (FUSE_CAP_WRITEBACK_CACHE) */
	bool killpriv_v2;       /* setuid/setgid clearing is ours (killpriv.c) */
	bool backing_allowed;   /* may register backing files (passthrough.c) */
	bool passthrough;       /* the connection backs opens (passthrough.c) */
	bool ring_asked;        /* libfuse is asked for FUSE over io_uring (transport.c) */
	unsigned ring_queues;   /* io_uring queues serving after INIT, 0: /dev/fuse only */

	struct writeback *wb;   /* upperdir= (writeback.c); NULL: memory only */
	struct writeback_idle *wb_idle; /* its pass when the mount is quiet
					 * (writeback_idle.c); NULL: none */
	unsigned open_writers;  /* open files that may write (atomic; file.c) */

	/* Upper layer usage, for statfs and the size=/nr_inodes= limits. */
	uint64_t upper_inodes;

	/* memoverlay-ctl: request and copy-up counters (stats.c, lock-free),
	 * and the control channel (control.c; NULL: none). */
	struct stats stats;
	struct control *ctl;
};

/* Every op starts here. With FUSE over io_uring, libfuse ends the rings'
 * threads (transport.c) with pthread_cancel, which would take effect at the
 * next cancellation point (a close, a pread) inside an op that holds locks,
 * and the end of the daemon would wait on those forever. A thread that
 * serves a request is not cancellable from then on: the ring threads end
 * by themselves once the session has ended (libfuse wakes each one), and
 * libfuse's own workers disable cancellation while they serve anyway. */
static inline struct ovl *ovl_of(fuse_req_t req)
{
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	return (struct ovl *)fuse_req_userdata(req);
}

#endif

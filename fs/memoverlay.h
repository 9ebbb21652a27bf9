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

/* ---- options.c: the command line, parsed once ---- */

enum atime_mode { ATIME_RELATIME, ATIME_NOATIME, ATIME_STRICT };

/* uidmapping=/gidmapping= ranges (see idmap.c). */
struct idrange {
	uint32_t container, host, count;
};

struct idmap {
	struct idrange *r;
	size_t n;
};

struct config {
	char **lowerdirs;       /* top layer first, escapes removed */
	int nlower;
	char *mountpoint;       /* as given */
	char *source;           /* fsname shown in /proc/mounts */
	bool foreground;
	bool debug;
	bool ro, noexec, nosuid, nodev;
	bool sync, dirsync;
	enum atime_mode atime;
	bool allow_other;
	bool allow_other_set;   /* given explicitly */
	uint64_t size;          /* upper bytes, 0 = unlimited (resolved from %) */
	bool size_set;          /* size= given (else the default, memory_budget.c) */
	uint64_t nr_inodes;     /* 0 = unlimited */
	char *medium_dir;       /* NULL: memfd */
	double entry_timeout;
	double attr_timeout;
	bool timeouts_set;      /* entry_/attr_timeout given on the command line */
	unsigned max_threads;
	char *hints_path;       /* hints=CONFIG.json */
	char *hint_mount;       /* hint_mount=DESTINATION (default: match by lowerdir) */
	bool shared_access;     /* others may change the lower layers: no long caches */
	bool writeback;         /* let the kernel cache writes (default; -o nowriteback) */
	bool seccomp;           /* system call allowlist once started (default; -o seccomp=off) */
	struct idmap uidmap, gidmap;
	long squash_uid;        /* -1: show real owners */
	long squash_gid;
};

/* Parses argv into cfg. On bad input prints one line to stderr naming the
 * bad value and returns -1; returns 1 when -h/-V was handled (exit 0). */
int config_parse(struct config *cfg, int argc, char **argv);
void config_free(struct config *cfg);
void config_usage(const char *prog);

/* idmap.c: "C:H:N[:C:H:N...]" into map; -1 if malformed. */
int idmap_parse(const char *value, struct idmap *map);
void idmap_free(struct idmap *map);
/* Owners as shown to users: lower ones through the mappings, all squashed. */
void idmap_show(const struct config *cfg, struct stat *st, bool from_lower);

/* hints_apply.c: takes the mount's options and its hint from an OCI
 * config.json (hints=), refuses an incompatible mount, and decides
 * exclusive or shared access (also from the lower layers' filesystems).
 * Prints one line and returns -1 on bad input. */
int config_apply_hints(struct config *cfg);

/* Splits a lowerdir= value at unescaped ':' ("\:" is a literal colon). */
int lowerdir_split(const char *value, char ***out, int *count);

/* ---- layer.c: read-only lower layers, every path resolved beneath the root;
 * markers, and the lower objects of a node ---- */

struct layer {
	int root_fd;            /* O_PATH|O_DIRECTORY of the layer root */
	char *path;
	dev_t dev;
};

/* Opens `rel` ("" = root) beneath layer's root without following any symlink.
 * flags are open(2) flags; O_NOFOLLOW and O_CLOEXEC are added. -errno on failure. */
int layer_open(const struct layer *l, const char *rel, int flags);

/* What one layer says about a name inside one of its directories. */
enum lower_kind {
	LOWER_ABSENT,           /* nothing here, look further down */
	LOWER_WHITEOUT,         /* name deleted: stop, name does not exist */
	LOWER_FOUND,            /* st filled in */
};
enum lower_kind layer_probe(int dirfd, const char *name, struct stat *st);
/* Whether directory `name` in dirfd is opaque (xattr or .wh..wh..opq). */
bool layer_dir_is_opaque(int dirfd, const char *name);
/* Names that are overlay markers and never shown. */
bool layer_name_is_marker(const char *name);
/* What a marker name in a layer's directory hides: NAME for ".wh.NAME"
 * (the aufs/OCI whiteout), NULL for any other name, including the overlay's
 * own ".wh..wh.*" metadata. */
const char *layer_whiteout_target(const char *name);
/* Whether st is a kernel overlayfs whiteout (a char device 0/0). */
bool layer_stat_is_whiteout(const struct stat *st);
/* "a/b" + "c" → "a/b/c"; "" + "c" → "c". Caller frees. */
char *path_join(const char *dir, const char *name);

struct node;
struct ovl;
/* Opens layer_pos's lower object of node n (flags as open(2)); -ENOENT
 * when n has no such layer. */
int ovl_open_lower(struct ovl *fs, const struct node *n, int layer_pos, int flags);
/* A path for l*xattr(2) that reaches n's top lower object without following
 * symlinks in the layer; *fd (or -1) must be closed afterwards. */
int lower_xattr_path(struct ovl *fs, const struct node *n, char *path, size_t size, int *fd);
/* Overlay bookkeeping xattrs (trusted.overlay.*, user.overlay.*): never
 * shown from a lower layer, never set by users. */
bool xattr_is_private(const char *name);

/* ---- upper.c: the in-memory upper layer ---- */

#include "cow.h"
#include "filestore.h"
#include "kernel_io.h"

struct node;
struct ovl;

struct xattr {
	char *name;
	void *value;
	size_t size;
};

/* FNV-1a of a name, for the hash tables of names: dirmap (upper.c) and
 * readdir.c's set of names already listed. */
static inline uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	return h;
}

/* One upper directory's entries: name -> child node, or a whiteout (NULL).
 * Every child named here holds one pin, taken and dropped by dirmap_*. */
struct dirmap_slot {
	char *name;             /* NULL: empty; TOMBSTONE: deleted */
	struct node *child;     /* NULL: whiteout */
};

struct dirmap {
	struct dirmap_slot *slots;
	size_t cap, used, live;   /* used counts tombstones too */
};

/* The upper copy of an inode: all metadata is virtual, data is in the filestore. */
struct upper {
	struct stat st;          /* mode, uid, gid, nlink, size, rdev, times */
	struct xattr *xattrs;
	size_t nxattrs;
	struct fdata data;       /* regular files */
	bool data_up;            /* data lives in the filestore (else in the lower file) */
	struct cow_map cow;      /* data_up: bytes still read from the lower file */
	bool opaque;             /* directory: lower entries are hidden */
	bool origin_pinned;      /* holds a pin for its other lower hard links */
	bool counted;            /* counts against nr_inodes (until its last name goes) */
	char *symlink;           /* symlink target */
	struct dirmap dir;       /* directories */
};

struct upper *upper_new(const struct stat *st);
void upper_free(struct ovl *fs, struct upper *u);
/* Counts one more upper inode against nr_inodes; -ENOSPC when full. */
int upper_inode_reserve(struct ovl *fs);
/* Its last name is gone: it no longer counts, as in tmpfs (open or not). */
void upper_inode_release(struct ovl *fs, struct upper *u);
/* A file with no name and no open handle: its data goes back at once, as in
 * tmpfs, not when the kernel forgets the inode. Caller holds n->lock. */
void upper_drop_unreachable_data(struct ovl *fs, struct node *n);
int upper_xattr_set(struct upper *u, const char *name, const void *value, size_t size, int flags);
const struct xattr *upper_xattr_get(const struct upper *u, const char *name);
int upper_xattr_remove(struct upper *u, const char *name);
void upper_touch(struct upper *u, bool atime, bool mtime, bool ctime);
/* A read of the upper copy: atime per the mount's relatime/noatime/strictatime.
 * Lower-only objects keep their lower atime: nothing is written to a layer. */
void upper_accessed(struct upper *u, enum atime_mode mode);

/* dirmap: lookups return true and set *child (NULL = whiteout) when present. */
bool dirmap_get(const struct dirmap *m, const char *name, struct node **child);
int dirmap_set(struct ovl *fs, struct dirmap *m, const char *name, struct node *child);
void dirmap_remove(struct ovl *fs, struct dirmap *m, const char *name);
void dirmap_clear(struct ovl *fs, struct dirmap *m);
/* Visits live entries (children and whiteouts). */
#define dirmap_for_each(m, s) \
	for (struct dirmap_slot *s = (m)->slots; s && s < (m)->slots + (m)->cap; s++) \
		if (s->name && s->name != DIRMAP_TOMBSTONE)
extern char dirmap_tombstone[];
#define DIRMAP_TOMBSTONE dirmap_tombstone

/* ---- acl.c: POSIX ACLs as upper xattrs ---- */
#define ACL_ACCESS_XATTR "system.posix_acl_access"
#define ACL_DEFAULT_XATTR "system.posix_acl_default"
/* Mode bits an access ACL stands for; equivalent: the ACL says no more than
 * the mode does (and need not be stored). -EINVAL for a malformed ACL. */
int acl_to_mode(const void *v, size_t size, mode_t *mode, bool *equivalent);
/* Updates an access ACL for chmod(mode). */
void acl_chmod(void *v, size_t size, mode_t mode);
/* Gives a new child of dir its inherited ACLs; adjusts *mode. 0 or -errno. */
int acl_inherit(const struct upper *dir, struct upper *child, mode_t *mode);
/* Whether an access ACL that req's caller writes on n clears its S_ISGID:
 * unless the caller is in n's group or has CAP_FSETID, as the kernel's
 * posix_acl_update_mode does for tmpfs. (The kernel would tell a FUSE
 * server with FUSE_SETXATTR_ACL_KILL_SGID, but libfuse does not pass it
 * on; this reads the caller's /proc status instead.) Takes ns_lock for
 * reading: call it holding no lock. */
bool acl_write_clears_sgid(struct ovl *fs, fuse_req_t req, struct node *n);

/* ---- copy_up.c ---- */

/* Gives n (and every parent up to the root) an upper copy of its metadata.
 * Caller holds ns_lock for writing. */
int copy_up_meta(struct ovl *fs, struct node *n);
/* Also gives the file upper data: lazily (a cow map over the lower file),
 * or copied whole (in the kernel) when the lower layers are shared. */
int copy_up_data(struct ovl *fs, struct node *n);
/* Finishes a lazy copy-up: the filestore then holds the whole file, in one
 * contiguous piece where it has data. For operations that work on the
 * filestore copy alone, and when scattered writes fragment it. Caller holds
 * n->lock; lower_fd is the lower file open for reading, or -1. On error
 * (e.g. ENOSPC) the lazy copy stays as it was. */
int copy_up_rest(struct ovl *fs, struct node *n, int lower_fd);

/* ---- node.c: the node table ---- */

enum { LOWER_XATTRS_UNKNOWN, LOWER_XATTRS_NONE, LOWER_XATTRS_SOME };

struct node {
	fuse_ino_t ino;         /* FUSE nodeid and st_ino (root: nodeid 1) */
	uint64_t st_ino;        /* what stat shows */
	uint64_t nlookup;       /* kernel references, under table lock */
	uint32_t pins;          /* daemon references, under table lock */
	struct node *hash_next;
	mode_t type;            /* S_IFMT bits */
	uint64_t parent_ino;    /* st_ino of the directory it was found in (for "..") */
	struct node *parent;    /* where it was first found (pinned); NULL for root */
	char *name;             /* its name there */

	/* Lower origin, fixed at creation: the path below the layer roots and
	 * the layers (top first) that contribute. Non-directories use only
	 * lower[0]; a merged directory lists every layer down to an opaque one. */
	char *lpath;
	uint16_t *lower;
	uint16_t nlower;

	/* NULL until copied up; then set once and never cleared while the
	 * node lives. Set under n->lock with ns_lock held for writing
	 * (copy_up_meta), or before the node is in the table (upper_create,
	 * make_root). So it is read without n->lock: stable under ns_lock
	 * (either mode); without ns_lock it may turn non-NULL at any moment,
	 * and the upper copy's changing fields are read under n->lock. */
	struct upper *upper;
	bool lower_unlinked;    /* lower-only object whose one name is gone: nlink 0 */
	uint8_t lower_xattrs;   /* LOWER_XATTRS_*: what its lower file has, once known */
	uint32_t nopen;         /* open file handles, under lock */
	pthread_mutex_t lock;   /* guards upper contents (lock order: see struct ovl) */
};

struct ovl;

int node_table_init(struct ovl *fs);
void node_table_destroy(struct ovl *fs);
/* Finds the node with st_ino, or inserts `fresh` (taking ownership) and returns
 * it. The returned node has one more lookup when `lookup` is true. */
struct node *node_insert_or_get(struct ovl *fs, struct node *fresh, bool lookup);
struct node *node_get(struct ovl *fs, fuse_ino_t ino);  /* +1 pin, NULL if gone */
/* node_get for an op: when the node is gone, replies ENOENT and returns NULL. */
struct node *node_get_req(fuse_req_t req, fuse_ino_t ino);
void node_put(struct ovl *fs, struct node *n);          /* -1 pin */
/* One more lookup (lookup) or pin (!lookup) on a node the caller can reach. */
void node_ref(struct ovl *fs, struct node *n, bool lookup);
void node_unref(struct ovl *fs, struct node *n, bool lookup);
void node_forget(struct ovl *fs, fuse_ino_t ino, uint64_t nlookup);
struct node *node_new(mode_t type, const char *lpath, const uint16_t *lower, uint16_t nlower);
void node_free(struct ovl *fs, struct node *n);
/* Returns freed memory to the system after many nodes went away. */
void node_trim_memory(struct ovl *fs);
/* Sets parent and name (pins the new parent, unpins the old one). */
int node_set_parent(struct ovl *fs, struct node *n, struct node *parent, const char *name);
/* Pins taken and dropped while holding nothing else. */
void node_pin(struct ovl *fs, struct node *n);
/* A directory that merges lower directories (not opaque, not upper-only). */
bool node_is_merged_dir(const struct node *n);

/* Stable st_ino for a lower (dev, ino): composed from a small per-device index
 * and the lower inode number, so it is the same on every lookup and readdir. */
uint64_t ino_from_lower(struct ovl *fs, dev_t dev, ino_t ino);
uint64_t ino_alloc_upper(struct ovl *fs);

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


/* ---- memory_budget.c ---- */
/* Half of RAM, and at most half the daemon's memory cgroup limit. */
uint64_t upper_default_size(void);
/* Whether the kernel's write cache may stand in front of a SIZE limit (0:
 * none): only when the limit dwarfs what the cache can hold dirty. */
bool write_cache_suits_limit(uint64_t size);

/* ---- privileges.c ---- */
bool in_initial_user_ns(void);
/* Keeps only KEEP in the permitted and effective sets (those held), drops
 * the rest from the bounding set where allowed, clears the ambient set. */
int keep_only_caps(const cap_value_t *keep, size_t nkeep);
/* Drops every capability but those needed to read the layers (and, with
 * SELF_UNMOUNT, to unmount), sets no_new_privs, raises RLIMIT_NOFILE. */
int drop_privileges(bool self_unmount);

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
/* Checks the mount point (made absolute in cfg) and opens every lower
 * layer; prints one line and returns -1 on bad input. */
int open_layers(struct ovl *fs);
void close_layers(struct ovl *fs);
/* The root node: merges every layer, shows the top lower root's owner and
 * mode, and is upper from the start. 0 or -errno. */
int make_root(struct ovl *fs);
void ovl_statfs(fuse_req_t req, fuse_ino_t ino);
/* Prints "memoverlay: WHAT 'PATH': strerror(err)"; returns -1. */
int die_path(const char *what, const char *path, int err);

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
	struct fuse_session *se;
	pthread_mutex_t handles_lock;   /* taken alone (lock order: above) */
	struct handle_link handles;     /* list head */
	pid_t unmounter_pid;    /* 0: the daemon unmounts itself */
	int unmounter_fd;       /* its pipe: closing it says "unmount now" */
	bool writeback;         /* the kernel caches writes (FUSE_CAP_WRITEBACK_CACHE) */

	/* Upper layer usage, for statfs and the size=/nr_inodes= limits. */
	uint64_t upper_inodes;

	double entry_timeout;
	double attr_timeout;    /* top lower root, taken at mount time */
};

static inline struct ovl *ovl_of(fuse_req_t req)
{
	return (struct ovl *)fuse_req_userdata(req);
}

#endif

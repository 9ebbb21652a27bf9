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
#include <sys/stat.h>
#include <sys/types.h>

/* ---- options.c: the command line, parsed once ---- */

enum atime_mode { ATIME_RELATIME, ATIME_NOATIME, ATIME_STRICT };

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
	uint64_t nr_inodes;     /* 0 = unlimited */
	char *medium_dir;       /* NULL: memfd */
	double entry_timeout;
	double attr_timeout;
	unsigned max_threads;
};

/* Parses argv into cfg. On bad input prints one line to stderr naming the
 * bad value and returns -1; returns 1 when -h/-V was handled (exit 0). */
int config_parse(struct config *cfg, int argc, char **argv);
void config_free(struct config *cfg);
void config_usage(const char *prog);

/* Splits a lowerdir= value at unescaped ':' ("\:" is a literal colon). */
int lowerdir_split(const char *value, char ***out, int *count);

/* ---- layer.c: read-only lower layers, every path resolved beneath the root ---- */

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
/* "a/b" + "c" → "a/b/c"; "" + "c" → "c". Caller frees. */
char *path_join(const char *dir, const char *name);

/* ---- node.c: the node table ---- */

struct upper;

struct node {
	fuse_ino_t ino;         /* FUSE nodeid and st_ino (root: nodeid 1) */
	uint64_t st_ino;        /* what stat shows */
	uint64_t nlookup;       /* kernel references, under table lock */
	uint32_t pins;          /* daemon references, under table lock */
	struct node *hash_next;
	mode_t type;            /* S_IFMT bits */
	uint64_t parent_ino;    /* st_ino of the directory it was found in (for "..") */

	/* Lower origin, fixed at creation: the path below the layer roots and
	 * the layers (top first) that contribute. Non-directories use only
	 * lower[0]; a merged directory lists every layer down to an opaque one. */
	char *lpath;
	uint16_t *lower;
	uint16_t nlower;

	struct upper *upper;    /* NULL until copied up */
	pthread_mutex_t lock;   /* guards upper contents */
};

struct ovl;

int node_table_init(struct ovl *fs);
void node_table_destroy(struct ovl *fs);
/* Finds the node with st_ino, or inserts `fresh` (taking ownership) and returns
 * it. The returned node has one more lookup when `lookup` is true. */
struct node *node_insert_or_get(struct ovl *fs, struct node *fresh, bool lookup);
struct node *node_get(struct ovl *fs, fuse_ino_t ino);  /* +1 pin, NULL if gone */
void node_put(struct ovl *fs, struct node *n);          /* -1 pin */
void node_forget(struct ovl *fs, fuse_ino_t ino, uint64_t nlookup);
struct node *node_new(mode_t type, const char *lpath, const uint16_t *lower, uint16_t nlower);
void node_free(struct node *n);

/* Stable st_ino for a lower (dev, ino): composed from a small per-device index
 * and the lower inode number, so it is the same on every lookup and readdir. */
uint64_t ino_from_lower(struct ovl *fs, dev_t dev, ino_t ino);
uint64_t ino_alloc_upper(struct ovl *fs);

/* ---- namei.c: lookup across layers ---- */

/* Looks `name` up in directory node `dir`; on success returns a node with one
 * more lookup (when `lookup`) or one pin (when not), and fills st. */
int ovl_lookup_name(struct ovl *fs, struct node *dir, const char *name,
		    bool lookup, struct node **out, struct stat *st);
/* Attributes of a node as the user sees them. */
int ovl_getattr_node(struct ovl *fs, struct node *n, struct stat *st);
/* Opens the node's top lower object (flags as open(2)). */
int ovl_open_lower(struct ovl *fs, const struct node *n, int layer_pos, int flags);

/* ---- readdir.c ---- */
void ovl_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void ovl_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void ovl_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- inode.c: attributes, xattrs, access, statfs ---- */
void ovl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_readlink(fuse_req_t req, fuse_ino_t ino);
void ovl_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void ovl_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void ovl_access(fuse_req_t req, fuse_ino_t ino, int mask);
void ovl_statfs(fuse_req_t req, fuse_ino_t ino);

/* ---- file.c: open and read ---- */
void ovl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ovl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void ovl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ---- ops.c ---- */
extern const struct fuse_lowlevel_ops ovl_ops;

/* ---- the filesystem ---- */

struct ovl {
	struct config cfg;
	struct layer *layers;
	int nlayers;
	struct node *root;

	/* Node table: open hashing keyed by nodeid. */
	pthread_mutex_t table_lock;
	struct node **buckets;
	size_t nbuckets;
	size_t nnodes;

	/* Inode numbering (see ino_from_lower). */
	pthread_mutex_t ino_lock;
	dev_t *devs;
	size_t ndevs;
	uint64_t next_upper_ino;
	struct big_ino *big;    /* lower inos too large to compose */

	/* Namespace lock: read for lookups and reads, write for changes. */
	pthread_rwlock_t ns_lock;

	/* Upper layer usage, for statfs and the size=/nr_inodes= limits. */
	uint64_t upper_bytes;
	uint64_t upper_inodes;

	double entry_timeout;
	double attr_timeout;    /* top lower root, taken at mount time */
};

static inline struct ovl *ovl_of(fuse_req_t req)
{
	return (struct ovl *)fuse_req_userdata(req);
}

#endif

/* config.h: the daemon's configuration — what options.c parses from the
 * command line, hints_apply.c takes from an OCI config.json, and the rest of
 * the daemon reads. No libfuse here, so the parser can be tested alone
 * (tests/unit/options). */
#ifndef MEMOVERLAY_CONFIG_H
#define MEMOVERLAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

enum atime_mode { ATIME_RELATIME, ATIME_NOATIME, ATIME_STRICT };

/* -o io_uring=: how requests reach the daemon (transport.c). */
enum io_uring_mode {
	IO_URING_AUTO,          /* the ring when libfuse and the kernel have it */
	IO_URING_ON,            /* the ring, or refuse to mount */
	IO_URING_OFF,           /* read(2)/splice(2) on /dev/fuse */
};

/* uidmapping=/gidmapping= ranges (see idmap.c): container+k on disk is
 * shown as host+k. */
struct idrange {
	uint32_t container, host, count;
};

struct idmap {
	struct idrange *r;
	size_t n;
};

/* A lower layer, resolved once, when the options are parsed. */
struct config_lower {
	char *given;            /* as written, escapes removed: what messages name */
	char *path;             /* absolute, symlinks resolved */
	int fd;                 /* O_PATH|O_DIRECTORY of it; open_layers() takes it */
};

struct config {
	struct config_lower *lower;     /* top layer first */
	int nlower;
	char *mountpoint;       /* absolute, symlinks resolved */
	char *source;           /* fsname shown in /proc/mounts */
	bool foreground;
	bool debug;
	unsigned flags;         /* mount flags, HINTS_OPT_* (hints.h): the words of
				 * libhints' table, plus a spec's (hints_apply.c) */
	enum atime_mode atime;  /* from flags (config_finish), for the daemon to apply */
	bool allow_other;       /* default: when run as root */
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
	bool writeback;         /* let the kernel cache writes (default; -o nowriteback;
				 * off with shared access or a small size limit) */
	bool seccomp;           /* system call allowlist once started (default; -o seccomp=off) */
	bool passthrough;       /* FUSE passthrough where the build, kernel and daemon's
				 * privileges allow (-o passthrough=auto, default; =off) */
	bool passthrough_upper; /* -o passthrough=upper: upper files in files of their own that
				 * back their opens (upper_files.h); no write cache */
	enum io_uring_mode io_uring;    /* default auto */
	struct idmap uidmap, gidmap;
	long squash_uid;        /* -1: show real owners */
	long squash_gid;
	/* upperdir=/workdir= (writeback.c): an overlay-format upper on disk,
	 * read as the top layer and written back to; NULL: memory only. */
	char *upperdir;         /* absolute, symlinks resolved */
	char *workdir;          /* absolute, symlinks resolved */
	bool volatile_wb;       /* volatile: no write-back on fsync, no syncfs */
	unsigned writeback_delay_ms;    /* write back once quiet this long (default
					 * 100; 0: only at unmount, fsync, ctl sync) */
	bool writeback_delay_set;       /* given explicitly */
	bool userxattr;         /* opaque markers as user.overlay.* */
};

/* ---- options.c ---- */

/* Parses argv into cfg and resolves its paths: the mount point and every
 * lower layer must be directories, and are opened or made absolute here.
 * On bad input prints one line to stderr naming the bad value and returns
 * -1; returns CONFIG_HELP or CONFIG_VERSION for -h or -V (the caller prints
 * config_usage() or the version, and exits 0). */
enum { CONFIG_HELP = 1, CONFIG_VERSION = 2 };
int config_parse(struct config *cfg, int argc, char **argv);
/* The defaults that depend on the hints (shared access) and the host
 * (memory, euid): call once config_apply_hints() is done. */
void config_finish(struct config *cfg);
void config_free(struct config *cfg);
void config_usage(const char *prog);
/* Splits a lowerdir= value at unescaped ':' ("\:" is a literal colon). */
int lowerdir_split(const char *value, char ***out, int *count);

/* ---- hints_apply.c ---- */

/* Takes the mount's options and its hint from an OCI config.json (hints=),
 * refuses an incompatible mount, and decides exclusive or shared access
 * (also from the lower layers' filesystems). Prints one line and returns
 * -1 on bad input. */
int config_apply_hints(struct config *cfg);

/* ---- idmap.c ---- */

/* "C:H:N[:C:H:N...]" into map; -1 if malformed. */
int idmap_parse(const char *value, struct idmap *map);
void idmap_free(struct idmap *map);
/* A lower object's owners through uidmapping=/gidmapping=, not squashed:
 * what its upper copy keeps (a later chown must not be needed to get the
 * real owner back once squashing is off). */
void idmap_map_lower(const struct config *cfg, struct stat *st);
/* The reverse, for what goes back to disk (upperdir=): owners as shown
 * into the ids a layer file keeps; outside every range: the overflow id. */
void idmap_to_disk(const struct config *cfg, uid_t *uid, gid_t *gid);
/* Owners as shown to users: lower ones through the mappings, all squashed. */
void idmap_show(const struct config *cfg, struct stat *st, bool from_lower);

/* the defaults (config_finish) come from memory_budget.c */
#include "memory_budget.h"

#endif

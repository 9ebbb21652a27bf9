/* SPDX-License-Identifier: Apache-2.0 */
/* stats.h: what memoverlay-ctl stats shows (stats.c) — FUSE requests by
 * opcode with a latency histogram each, and copy-ups by kind. Counters
 * only: lock-free (relaxed atomics), cheap enough to sit around every
 * handler. The rest of `stats` (space, inodes, whiteouts, open files...)
 * is read from the filesystem when asked (stats_json). */
#ifndef MEMOVERLAY_STATS_H
#define MEMOVERLAY_STATS_H

#include <stdint.h>
#include <time.h>

/* The handlers ops.c times; names as libfuse's -d log spells the opcodes. */
enum stats_op {
	SOP_INIT, SOP_LOOKUP, SOP_FORGET, SOP_BATCH_FORGET, SOP_GETATTR, SOP_SETATTR,
	SOP_READLINK, SOP_SYMLINK, SOP_MKNOD, SOP_MKDIR, SOP_UNLINK, SOP_RMDIR, SOP_RENAME,
	SOP_RENAME2, SOP_LINK, SOP_OPEN, SOP_READ, SOP_WRITE, SOP_STATFS, SOP_RELEASE,
	SOP_FSYNC, SOP_SETXATTR, SOP_GETXATTR, SOP_LISTXATTR, SOP_REMOVEXATTR, SOP_OPENDIR,
	SOP_READDIR, SOP_RELEASEDIR, SOP_FSYNCDIR, SOP_ACCESS, SOP_CREATE, SOP_FALLOCATE,
	SOP_READDIRPLUS, SOP_LSEEK, SOP_COPY_FILE_RANGE,
	SOP_NOPS
};

/* Latency buckets: 4 per power of two of nanoseconds (a bucket is at most
 * 19% wide), so p50/p99 come out within that of the truth. */
#define STATS_SUB 4
#define STATS_BUCKETS (64 * STATS_SUB)

enum copyup_kind {
	COPYUP_META,    /* metadata only: chmod, chown, utimes, xattrs, links, renames */
	COPYUP_LAZY,    /* data, lazily: the unwritten bytes still come from the lower file */
	COPYUP_WHOLE,   /* data, copied whole at once (shared access) */
	COPYUP_KINDS
};

struct stats {
	uint64_t count[SOP_NOPS];
	uint64_t ns_total[SOP_NOPS];
	uint64_t hist[SOP_NOPS][STATS_BUCKETS];
	uint64_t copyups[COPYUP_KINDS];
};

const char *stats_op_name(enum stats_op op);

static inline uint64_t stats_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One request of op done, started at t0 (stats_now()). */
void stats_record(struct stats *s, enum stats_op op, uint64_t t0);
void stats_copyup(struct stats *s, enum copyup_kind kind);

/* Reading them (not atomically as a whole: each counter is exact). */
uint64_t stats_count(const struct stats *s, enum stats_op op);
/* The q-quantile (0 < q <= 1) of op's latency in ns, 0 without requests. */
uint64_t stats_quantile(const struct stats *s, enum stats_op op, double q);
uint64_t stats_copyups(const struct stats *s, enum copyup_kind kind);

struct ovl;
/* Everything `memoverlay-ctl stats` shows, as one JSON object (field names
 * in the README, section memoverlay-ctl). Malloc'd text, NULL on ENOMEM.
 * Takes ns_lock for reading to count whiteouts, opaque directories and
 * the bytes lazily copied files still read from their lower files. */
char *stats_json(struct ovl *fs);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* writeback_idle.c: with upperdir=, a write-back soon after the mount goes
 * quiet (-o writeback_delay=MS, default 100), not only at unmount.
 *
 * Why: umount(2) returns before a FUSE daemon has done anything (the
 * kernel sends no FUSE_DESTROY to a non-block FUSE mount), so what only the
 * unmount writes back lands in DIR after the caller has moved on. A next
 * mount waits for it (the workdir lock, writeback.c), but an engine that
 * deletes the container right after its last unmount (buildah's build
 * container, `podman run --rm`) would find WORK/work or DIR being filled
 * while it empties them ("directory not empty"). Written while the mount
 * is idle, the changes are in DIR before the container's processes have
 * long exited, and the unmount has nothing left to write. It also narrows
 * what a crash (kill -9) can lose.
 *
 * Quiet means: no request that changes the tree or releases a file for
 * DELAY ms (two equal looks at the counters stats.c keeps anyway), and no
 * file open for writing — the kernel's write cache may still hold what a
 * writer wrote, and rewriting a big file on every pause of its writer
 * would cost more than it saves. The pass is writeback_all(): atomic per
 * object, the same as at unmount.
 */
#include "memoverlay.h"
#include "stats.h"
#include "writeback.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct writeback_idle {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stop;              /* under lock */
	unsigned delay_ms;
};

/* Requests after which the tree, or a file's data, may differ. */
static const enum stats_op changing_ops[] = {
	SOP_SETATTR, SOP_SYMLINK, SOP_MKNOD, SOP_MKDIR, SOP_UNLINK, SOP_RMDIR, SOP_RENAME,
	SOP_RENAME2, SOP_LINK, SOP_WRITE, SOP_RELEASE, SOP_SETXATTR, SOP_REMOVEXATTR,
	SOP_CREATE, SOP_FALLOCATE, SOP_COPY_FILE_RANGE,
};

static uint64_t changes_so_far(struct ovl *fs)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < sizeof(changing_ops) / sizeof(changing_ops[0]); i++)
		sum += stats_count(&fs->stats, changing_ops[i]);
	return sum;
}

/* Sleeps DELAY ms or until told to stop; true to go on. */
static bool idle_sleep(struct writeback_idle *w)
{
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += w->delay_ms / 1000;
	until.tv_nsec += (long)(w->delay_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&w->lock);
	while (!w->stop && pthread_cond_timedwait(&w->wake, &w->lock, &until) != ETIMEDOUT)
		;
	bool go_on = !w->stop;
	pthread_mutex_unlock(&w->lock);
	return go_on;
}

static void *idle_main(void *arg)
{
	struct ovl *fs = arg;
	struct writeback_idle *w = fs->wb_idle;
	uint64_t written = changes_so_far(fs), seen = written;
	while (idle_sleep(w)) {
		uint64_t now = changes_so_far(fs);
		if (now != seen) {              /* still busy: look again later */
			seen = now;
			continue;
		}
		if (now == written || __atomic_load_n(&fs->open_writers, __ATOMIC_RELAXED) > 0)
			continue;
		/* A failure is said by writeback_all and leaves the objects
		 * dirty: the next change, fsync or the unmount tries again. */
		writeback_all(fs);
		written = now;
	}
	return NULL;
}

int writeback_idle_start(struct ovl *fs)
{
	if (!fs->wb || !writeback_writable(fs) || fs->cfg.writeback_delay_ms == 0)
		return 0;
	struct writeback_idle *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->delay_ms = fs->cfg.writeback_delay_ms;
	pthread_mutex_init(&w->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->wake, &ca);
	pthread_condattr_destroy(&ca);
	fs->wb_idle = w;
	int res = pthread_create(&w->thread, NULL, idle_main, fs);
	if (res != 0) {
		fs->wb_idle = NULL;
		pthread_cond_destroy(&w->wake);
		pthread_mutex_destroy(&w->lock);
		free(w);
		return -res;
	}
	return 0;
}

void writeback_idle_stop(struct ovl *fs)
{
	struct writeback_idle *w = fs->wb_idle;
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL); /* a pass under way ends first */
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w);
	fs->wb_idle = NULL;
}

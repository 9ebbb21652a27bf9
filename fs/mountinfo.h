/* SPDX-License-Identifier: Apache-2.0 */
/* mountinfo.h: finding a mount in /proc/self/mountinfo (mountinfo.c) —
 * by its mount point, never by stat(2) on it: the daemon may not serve
 * yet (bdi.c, control.c: stat would wait for it), and another user may
 * not be let in (memoverlay-ctl: a FUSE mount without allow_other).
 * Shared by the daemon and tools/memoverlay-ctl. */
#ifndef MEMOVERLAY_MOUNTINFO_H
#define MEMOVERLAY_MOUNTINFO_H

#include <stdbool.h>
#include <stddef.h>

struct mount_entry {
	char dev[32];           /* "MAJ:MIN" */
	char fstype[64];        /* "fuse.memoverlay", ... */
	long user_id;           /* a FUSE mount's user_id= (the daemon's uid), else -1 */
};

/* mountinfo writes ' ', '\t', '\n' and '\\' as \ooo octal escapes. */
void mountinfo_unescape(char *s);
/* The topmost mount on mountpoint (an absolute path as mountinfo shows
 * it); FUSE mounts only when fuse_only. 0, or -1 when there is none. */
int mountinfo_find(const char *mountpoint, bool fuse_only, struct mount_entry *out);

#endif

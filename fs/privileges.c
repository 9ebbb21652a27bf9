/* privileges.c: once the mount is up, keep only what serving it needs. */
#include "memoverlay.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

/* The initial user namespace maps every id to itself: "0 0 4294967295". */
bool in_initial_user_ns(void)
{
	FILE *f = fopen("/proc/self/uid_map", "re");
	if (!f)
		return true; /* no /proc: no way to be in another namespace either */
	unsigned long inside, outside, count;
	int n = fscanf(f, "%lu %lu %lu", &inside, &outside, &count);
	int more = fgetc(f) == '\n' ? fgetc(f) : EOF;
	fclose(f);
	return n == 3 && inside == 0 && outside == 0 && count == 4294967295UL && more == EOF;
}

static bool kept(const cap_value_t *keep, size_t nkeep, cap_value_t c)
{
	for (size_t i = 0; i < nkeep; i++)
		if (keep[i] == c)
			return true;
	return false;
}

int keep_only_caps(const cap_value_t *keep, size_t nkeep)
{
	cap_t caps = cap_get_proc();
	if (!caps)
		return -errno;
	cap_flag_value_t have_setpcap = CAP_CLEAR;
	cap_get_flag(caps, CAP_SETPCAP, CAP_EFFECTIVE, &have_setpcap);
	/* The bounding set first: dropping from it needs CAP_SETPCAP. */
	if (have_setpcap == CAP_SET) {
		for (cap_value_t c = 0; c <= CAP_LAST_CAP; c++)
			if (!kept(keep, nkeep, c) && CAP_IS_SUPPORTED(c) && cap_drop_bound(c) < 0 &&
			    errno != EINVAL) {
				int e = errno;
				cap_free(caps);
				return -e;
			}
	}
	cap_flag_value_t held[CAP_LAST_CAP + 1];
	for (size_t i = 0; i < nkeep; i++)
		cap_get_flag(caps, keep[i], CAP_PERMITTED, &held[i]);
	cap_clear(caps);
	for (size_t i = 0; i < nkeep; i++) {
		if (held[i] != CAP_SET)
			continue;
		cap_set_flag(caps, CAP_PERMITTED, 1, &keep[i], CAP_SET);
		cap_set_flag(caps, CAP_EFFECTIVE, 1, &keep[i], CAP_SET);
	}
	int res = cap_set_proc(caps) < 0 ? -errno : 0;
	cap_free(caps);
	if (res < 0)
		return res;
	if (CAP_AMBIENT_SUPPORTED())
		cap_reset_ambient();
	return 0;
}

/* What the daemon still needs (without upperdir=):
 * - CAP_DAC_READ_SEARCH: read lower files and directories owned by others
 *   (in a user namespace: those whose owner is mapped into it);
 * - CAP_SYS_ADMIN, as root of the initial user namespace only: read
 *   trusted.* xattrs of lower files (opaque markers, copy-up of trusted.*
 *   attributes), unmount itself, and register FUSE passthrough backing
 *   files (the kernel checks it at every FUSE_DEV_IOC_BACKING_OPEN, so it
 *   must outlive the drop; passthrough.c). In any other user namespace the
 *   kernel never lets it read trusted.* of files outside it, and the
 *   unmount helper (unmounter.c) unmounts, so it goes.
 * Nothing else: no DAC_OVERRIDE (the daemon never writes a layer), no
 * CHOWN/FOWNER (upper ownership is virtual), no SETUID, no KILL. */
int drop_privileges(bool self_unmount, bool write_upper)
{
	struct rlimit rl;
	/* Lower fds are per open file; let the hard limit be the only bound. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* With upperdir= (writeback.c) a root daemon writes the upper layer
	 * as the kernel would: the real owners (CAP_CHOWN), then modes,
	 * times and xattrs of files it no longer owns (CAP_FOWNER), setuid
	 * and setgid bits of groups it is not in (CAP_FSETID), whiteouts and
	 * device nodes (CAP_MKNOD), into directories whose modes keep their
	 * owner out (CAP_DAC_OVERRIDE); trusted.overlay.opaque takes
	 * CAP_SYS_ADMIN, which root of the initial namespace keeps anyway.
	 * Without upperdir= none of them. */
	cap_value_t keep[8] = { CAP_DAC_READ_SEARCH };
	size_t n = 1;
	if (self_unmount)
		keep[n++] = CAP_SYS_ADMIN;
	if (write_upper) {
		keep[n++] = CAP_CHOWN;
		keep[n++] = CAP_FOWNER;
		keep[n++] = CAP_FSETID;
		keep[n++] = CAP_MKNOD;
		keep[n++] = CAP_DAC_OVERRIDE;
	}
	int res = keep_only_caps(keep, n);
	if (res < 0)
		return res;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	return 0;
}

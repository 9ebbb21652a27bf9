/* privileges.c: once the mount is up, keep only what serving it needs. */
#include "memoverlay.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

/* What the daemon still needs as root:
 * - CAP_DAC_READ_SEARCH: read lower files and directories owned by others;
 * - CAP_SYS_ADMIN: read trusted.* xattrs of lower files (opaque markers and
 *   copy-up of trusted.* attributes), and unmount itself on SIGTERM.
 * Nothing else: no DAC_OVERRIDE (the daemon never writes a layer), no
 * CHOWN/FOWNER (upper ownership is virtual), no SETUID, no KILL. */
static const cap_value_t keep[] = { CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN };

static bool kept(cap_value_t c)
{
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		if (keep[i] == c)
			return true;
	return false;
}

int drop_privileges(void)
{
	struct rlimit rl;
	/* Lower fds are per open file; let the hard limit be the only bound. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	cap_t caps = cap_get_proc();
	if (!caps)
		return -errno;
	cap_flag_value_t have_setpcap = CAP_CLEAR;
	cap_get_flag(caps, CAP_SETPCAP, CAP_EFFECTIVE, &have_setpcap);
	/* The bounding set first: dropping from it needs CAP_SETPCAP. */
	if (have_setpcap == CAP_SET) {
		for (cap_value_t c = 0; c <= CAP_LAST_CAP; c++)
			if (!kept(c) && CAP_IS_SUPPORTED(c) && cap_drop_bound(c) < 0 && errno != EINVAL) {
				int e = errno;
				cap_free(caps);
				return -e;
			}
	}
	cap_flag_value_t held[sizeof(keep) / sizeof(keep[0])];
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		cap_get_flag(caps, keep[i], CAP_PERMITTED, &held[i]);
	cap_clear(caps);
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
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
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	return 0;
}

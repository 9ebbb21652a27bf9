/* SPDX-License-Identifier: Apache-2.0 */
/* killpriv.c: clearing setuid, setgid and file capabilities when a file is
 * written, truncated or given away — what the kernel's file_remove_privs()
 * and chown_common() do for a local filesystem (fs/attr.c,
 * setattr_should_drop_suidgid).
 *
 * Without FUSE_CAP_HANDLE_KILLPRIV_V2 the kernel does it itself, and to
 * know whether there is anything to do it asks for security.capability
 * before every write(2): a round trip each. With it (libfuse 3.17+; see
 * ops.c) the kernel asks once, stops caring, and tells us per request
 * whose job it is: FUSE_WRITE_KILL_SUIDGID on a write, FUSE_OPEN_KILL_SUIDGID
 * on an open with O_TRUNC, FATTR_KILL_SUIDGID on a truncate — each only
 * when the caller lacks CAP_FSETID — and FATTR_KILL_SUIDGID on every chown
 * of a non-directory. Then the decision per mode bit is ours. For a
 * fallocate or a copy_file_range it says nothing, and its own clearing
 * (file_modified) sends us nothing either: there we ask /proc whether the
 * caller has CAP_FSETID.
 */
#include "memoverlay.h"

#include "libfuse_features.h"

#include <string.h>

#define CAPS_XATTR "security.capability"

bool killpriv_asked(const struct ovl *fs, const struct fuse_file_info *fi)
{
#ifdef HAVE_FUSE_KILLPRIV_V2
	return fs->killpriv_v2 && fi->kill_suidgid;
#else
	(void)fs;
	(void)fi;
	return false;
#endif
}

/* The group the kernel sees the file in: squash_to_gid shows another. */
static gid_t shown_gid(const struct ovl *fs, const struct upper *u)
{
	return fs->cfg.squash_gid >= 0 ? (gid_t)fs->cfg.squash_gid : u->st.st_gid;
}

bool killpriv(struct ovl *fs, fuse_req_t req, struct upper *u, enum killpriv_cause why)
{
	mode_t mode = u->st.st_mode;
	/* A write or truncate kills only on regular files; chown on every
	 * non-directory (chown_common). */
	if (why == KILLPRIV_CHOWN ? S_ISDIR(mode) : !S_ISREG(mode))
		return false;
	mode_t kill = mode & S_ISUID;
	/* setattr_should_drop_sgid: a group-executable setgid file is a
	 * setgid program and loses the bit; without group execute the bit
	 * means mandatory locking and stays, unless the caller could not
	 * have set it (neither in the group nor with CAP_FSETID). */
	if ((mode & S_ISGID) &&
	    ((mode & S_IXGRP) || !caller_in_group_or_capable(req, shown_gid(fs, u))))
		kill |= S_ISGID;
	bool changed = false;
	if (kill) {
		u->st.st_mode &= ~kill;
		changed = true;
	}
	/* security_inode_killpriv: the capabilities go whatever the mode */
	if (upper_xattr_remove(u, CAPS_XATTR) == 0)
		changed = true;
	if (changed)
		upper_touch(u, false, false, true); /* a mode change, as the kernel's */
	return changed;
}

bool killpriv_unasked(struct ovl *fs, fuse_req_t req, struct upper *u)
{
	/* security.capability needs no look-up: the kernel's file_modified()
	 * still removes it itself (S_NOSEC is never set on such a file) */
	if (!fs->killpriv_v2 || !(u->st.st_mode & (S_ISUID | S_ISGID)) ||
	    caller_capable(req, CAP_FSETID))
		return false;
	return killpriv(fs, req, u, KILLPRIV_WRITE);
}

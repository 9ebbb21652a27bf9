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

/* Clears the mode bits in kill and the capabilities (security_inode_killpriv:
 * they go whatever the mode). Returns whether anything changed. */
static bool kill_privs(struct upper *u, mode_t kill)
{
	bool changed = (u->st.st_mode & kill) != 0;
	u->st.st_mode &= ~kill;
	if (upper_xattr_remove(u, CAPS_XATTR) == 0)
		changed = true;
	return changed;
}

/* setattr_should_drop_sgid: a group-executable setgid file is a setgid
 * program and loses the bit; without group execute the bit means
 * mandatory locking and stays, unless the writer could not have set it
 * (neither in the group nor with CAP_FSETID). */
static mode_t kill_bits(mode_t mode, bool writer_may_set_sgid)
{
	mode_t kill = S_ISUID;
	if ((mode & S_IXGRP) || !writer_may_set_sgid)
		kill |= S_ISGID;
	return kill;
}

bool killpriv(struct ovl *fs, fuse_req_t req, struct upper *u, enum killpriv_cause why)
{
	mode_t mode = u->st.st_mode;
	/* A write or truncate kills only on regular files; chown on every
	 * non-directory (chown_common). */
	if (why == KILLPRIV_CHOWN ? S_ISDIR(mode) : !S_ISREG(mode))
		return false;
	bool may_set_sgid = !(mode & S_ISGID) || (mode & S_IXGRP) ||
			    caller_in_group_or_capable(req, shown_gid(fs, u));
	bool changed = kill_privs(u, kill_bits(mode, may_set_sgid));
	if (changed)
		upper_touch(u, false, false, true); /* a mode change, as the kernel's */
	return changed;
}

bool killpriv_kernel_write(struct upper *u)
{
	/* the write did not reach us to say who made it */
	return kill_privs(u, kill_bits(u->st.st_mode, true));
}

bool killpriv_needed(const struct upper *u)
{
	return (u->st.st_mode & (S_ISUID | S_ISGID)) || upper_xattr_get(u, CAPS_XATTR);
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

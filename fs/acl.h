/* SPDX-License-Identifier: Apache-2.0 */
/* acl.h: POSIX ACLs kept as upper xattrs (acl.c). Needs no FUSE. */
#ifndef MEMOVERLAY_ACL_H
#define MEMOVERLAY_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct upper;

#define ACL_ACCESS_XATTR "system.posix_acl_access"
#define ACL_DEFAULT_XATTR "system.posix_acl_default"
/* Mode bits an access ACL stands for; equivalent: the ACL says no more than
 * the mode does (and need not be stored). -EINVAL for a malformed ACL. */
int acl_to_mode(const void *v, size_t size, mode_t *mode, bool *equivalent);
/* Updates an access ACL for chmod(mode). */
void acl_chmod(void *v, size_t size, mode_t mode);
/* Gives a new child of dir its inherited ACLs; adjusts *mode. 0 or -errno. */
int acl_inherit(const struct upper *dir, struct upper *child, mode_t *mode);

#endif

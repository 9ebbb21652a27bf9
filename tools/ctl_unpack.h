/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_unpack.h: a pax/ustar stream (an OCI layer, as memoverlay-ctl
 * export gets it) written out as a kernel overlayfs upper directory
 * (ctl_unpack.c): .wh.NAME becomes a character device 0/0 NAME,
 * .wh..wh..opq the opaque xattr on its directory. */
#ifndef MEMOVERLAY_CTL_UNPACK_H
#define MEMOVERLAY_CTL_UNPACK_H

#include <stddef.h>
#include <sys/types.h>

/* Fills buf with up to len bytes of the stream: the count, 0 at its end,
 * or -errno. */
typedef ssize_t (*unpack_source)(void *arg, void *buf, size_t len);

/* Unpacks the stream into dir (made if missing; must be empty). Owners
 * are set where the caller may (root); xattrs where the filesystem takes
 * them. The opaque marker is trusted.overlay.opaque, or
 * user.overlay.opaque when user_xattr (rootless overlayfs, -o userxattr).
 * Prints what failed; 0 or -errno. */
int unpack_to_dir(unpack_source src, void *arg, const char *dir, int user_xattr);

#endif

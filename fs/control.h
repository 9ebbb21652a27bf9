/* SPDX-License-Identifier: Apache-2.0 */
/* control.h: the control channel memoverlay-ctl talks to (control.c) — a
 * unix socket named after the mount's device number, served by one
 * thread of its own (never a FUSE worker). Wire format: control_proto.h. */
#ifndef MEMOVERLAY_CONTROL_H
#define MEMOVERLAY_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct ovl;

/* Where a daemon running as euid keeps its channel sockets:
 * /run/memoverlay for root of the initial user namespace; else
 * $XDG_RUNTIME_DIR/memoverlay, /run/user/EUID/memoverlay where that is
 * the user's, or /tmp/memoverlay-EUID. 0, or -ENAMETOOLONG. */
int control_dir(uid_t euid, bool initial_root, char *buf, size_t cap);

/* Makes the socket DIR/MAJ:MIN.sock for fs's mount (found in mountinfo:
 * the mount does not serve yet) and the thread that serves it. Call once
 * the daemon is the process it stays (after forking) and before the
 * seccomp filter. Prints one line and returns -1 on failure: the mount
 * then works, without a channel. */
int control_start(struct ovl *fs);
/* Ends the thread (a request under way stops), removes the socket. */
void control_stop(struct ovl *fs);

#endif

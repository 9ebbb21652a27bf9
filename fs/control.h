/* SPDX-License-Identifier: Apache-2.0 */
/* control.h: the control channel memoverlay-ctl talks to (control.c) — a
 * unix socket named after the mount's device number, served by one
 * thread of its own (never a FUSE worker). Wire format: control_proto.h. */
#ifndef MEMOVERLAY_CONTROL_H
#define MEMOVERLAY_CONTROL_H


struct ovl;

/* Makes the socket DIR/MAJ:MIN.sock for fs's mount (found in mountinfo:
 * the mount does not serve yet; DIR: control_dir()). Call once the
 * daemon is the process it stays (after forking) and before the seccomp
 * filter (socket, bind, mkdir). Prints one line and returns -1 on
 * failure: the mount then works, without a channel. */
int control_open(struct ovl *fs);
/* Starts the thread that serves it: after the kernel's INIT is answered,
 * so that what INIT decided (write cache, passthrough, rings) is set
 * before the thread reads it. */
void control_run(struct ovl *fs);
/* Ends the thread (a request under way stops), removes the socket. */
void control_stop(struct ovl *fs);

#endif

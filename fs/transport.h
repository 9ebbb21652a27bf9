/* transport.h: how requests reach the daemon — libfuse's loop reading (or
 * splicing) them from /dev/fuse, or FUSE over io_uring — and the kernel's
 * INIT, which decides between the two (see transport.c). */
#ifndef MEMOVERLAY_TRANSPORT_H
#define MEMOVERLAY_TRANSPORT_H

#include <stdbool.h>

struct ovl;
struct fuse_args;

/* Before mounting: decides whether to ask libfuse for the ring (sets
 * fs->ring_asked), from -o io_uring= and what this build and the kernel
 * have. With io_uring=on and no way to get it, prints one line saying what
 * to do and returns -1. */
int transport_check(struct ovl *fs);

/* libfuse's own words for what transport_check() decided (for
 * fuse_session_new); 0, or -1 out of memory. */
int transport_add_args(const struct ovl *fs, struct fuse_args *args);

/* Once mounted (and before the session loop): reads the kernel's INIT and
 * answers it, which starts the ring if it was asked for and the kernel
 * offers it; records how many ring queues serve (fs->ring_queues, 0: none).
 * With io_uring=on and no ring, prints one line and returns -1; with -d,
 * prints the transport chosen. Returns 0, or -1 if INIT failed. */
int transport_answer_init(struct ovl *fs);

#endif

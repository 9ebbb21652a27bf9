/* seccomp.h: the daemon's system call allowlist (see seccomp.c). */
#ifndef MEMOVERLAY_SECCOMP_H
#define MEMOVERLAY_SECCOMP_H

struct config;

/* What the filter lets FUSE over io_uring do (transport.c). */
enum seccomp_ring {
	SECCOMP_NO_RING,        /* nothing: no ring */
	SECCOMP_RING_STARTING,  /* libfuse may set up its rings (while it answers INIT) */
	SECCOMP_RING_RUNNING,   /* the rings are up: only io_uring_enter on them */
};

/* Once start-up is done (mount live, unmount helper forked, privileges
 * dropped): allows every thread only the system calls serving the mount
 * needs; any other one stops the daemon with a line on stderr naming it.
 * Called a second time (after INIT, when the ring was STARTING), it adds
 * a filter that takes away what only starting the ring needed: a call
 * passes only if every filter loaded allows it. Does nothing with -o
 * seccomp=off. Returns 0, or -errno after printing one line
 * ("memoverlay: ...") to stderr. */
int seccomp_install(const struct config *cfg, enum seccomp_ring ring);

#endif

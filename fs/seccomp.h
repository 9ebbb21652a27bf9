/* seccomp.h: the daemon's system call allowlist (see seccomp.c). */
#ifndef MEMOVERLAY_SECCOMP_H
#define MEMOVERLAY_SECCOMP_H

struct config;

/* Once start-up is done (mount live, unmount helper forked, privileges
 * dropped): allows every thread only the system calls serving the mount
 * needs; any other one stops the daemon with a line on stderr naming it.
 * Does nothing with -o seccomp=off. Returns 0, or -errno after printing
 * one line ("memoverlay: ...") to stderr. */
int seccomp_install(const struct config *cfg);

#endif

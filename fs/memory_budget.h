/* SPDX-License-Identifier: Apache-2.0 */
/* memory_budget.h: what the in-memory upper may take (memory_budget.c).
 * Needs no FUSE. */
#ifndef MEMOVERLAY_MEMORY_BUDGET_H
#define MEMOVERLAY_MEMORY_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

/* Half of RAM, and at most half the daemon's memory cgroup limit. */
uint64_t upper_default_size(void);
/* Memory the daemon could still get: the machine's MemAvailable, and the
 * room left under its memory cgroups' limits. */
uint64_t memory_room(void);
/* Whether the kernel's write cache may stand in front of a SIZE limit (0:
 * none): only when the limit dwarfs what the cache can hold dirty. */
bool write_cache_suits_limit(uint64_t size);

/* What the memory cgroups of a process allow: the smallest limit over its
 * cgroup and those above it (0: none), and the least room left under one
 * of them (UINT64_MAX: no limit). */
struct cgroup_memory {
	uint64_t limit, room;
};
/* Read from its /proc/PID/cgroup and /proc/PID/mountinfo (paths, so that
 * tests can give a made-up hierarchy), v2 or v1. */
struct cgroup_memory cgroup_memory_of(const char *proc_cgroup, const char *mountinfo);

#endif

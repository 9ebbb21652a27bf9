/* memory_budget.c: what the in-memory upper layer may take by default, and
 * when the kernel's write cache may sit in front of it.
 *
 * As tmpfs: without size=, half of RAM, so that one runaway writer in a
 * sandbox cannot take all of the host's memory. Upper data is charged to the
 * daemon's memory cgroup, so where that has a limit the default is half of
 * it too: filling the upper then ends in ENOSPC, not in an OOM kill.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>

static uint64_t read_u64_file(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	char buf[64];
	uint64_t v = 0;
	if (fgets(buf, sizeof(buf), f) && strncmp(buf, "max", 3) != 0)
		v = strtoull(buf, NULL, 10);
	fclose(f);
	return v;
}

/* The smallest limit FILE sets on DIR or any cgroup above it (0: none).
 * DIR is the cgroup's path below the hierarchy's mount point MNT. */
static uint64_t limit_up_from(const char *mnt, char *dir, const char *file)
{
	uint64_t best = 0;
	for (;;) {
		char path[4096];
		if (snprintf(path, sizeof(path), "%s%s/%s", mnt, dir, file) < (int)sizeof(path)) {
			uint64_t v = read_u64_file(path);
			/* v1 says "no limit" with a huge page-rounded number */
			if (v && v < (UINT64_C(1) << 60) && (!best || v < best))
				best = v;
		}
		char *slash = strrchr(dir, '/');
		if (!slash || dir[0] == '\0')
			return best;
		*slash = '\0';
	}
}

/* Where the cgroup hierarchy with the memory controller is mounted: the
 * unified one (cgroup2) or the v1 "memory" one. */
static bool memory_hierarchy_mount(bool v2, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return false;
	char line[4096];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		char mnt[2048], type[64], opts[1024];
		const char *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*s %*s %*s %*s %2047s", mnt) != 1 ||
		    sscanf(sep + 3, "%63s %*s %1023s", type, opts) != 2)
			continue;
		if (v2 ? strcmp(type, "cgroup2") == 0
		       : strcmp(type, "cgroup") == 0 && strstr(opts, "memory") != NULL) {
			found = snprintf(out, len, "%s", mnt) < (int)len;
		}
	}
	fclose(f);
	return found;
}

/* The daemon's memory cgroup limit, v2 or v1 (0: none, or none found). */
static uint64_t cgroup_memory_limit(void)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return 0;
	char line[4096];
	uint64_t best = 0;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		/* "0::/path" (v2) or "4:memory:/path" (v1) */
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = '\0';
		bool v2 = strcmp(line, "0") == 0 && c1[1] == '\0';
		bool v1 = strstr(c1 + 1, "memory") != NULL;
		char mnt[2048];
		if ((!v1 && !v2) || !memory_hierarchy_mount(v2, mnt, sizeof(mnt)))
			continue;
		char dir[2048];
		snprintf(dir, sizeof(dir), "%s", strcmp(c2 + 1, "/") == 0 ? "" : c2 + 1);
		uint64_t v = limit_up_from(mnt, dir, v2 ? "memory.max" : "memory.limit_in_bytes");
		if (v && (!best || v < best))
			best = v;
	}
	fclose(f);
	return best;
}

uint64_t upper_default_size(void)
{
	struct sysinfo si;
	uint64_t ram = sysinfo(&si) == 0 ? (uint64_t)si.totalram * si.mem_unit : 0;
	uint64_t size = ram / 2;
	uint64_t cg = cgroup_memory_limit();
	if (cg && (size == 0 || cg / 2 < size))
		size = cg / 2;
	return size;
}

/* The most the kernel may hold as dirty pages for this mount: a FUSE
 * mount's backing device may have 1% (its max_ratio) of the machine's
 * dirty threshold (vm.dirty_bytes, or vm.dirty_ratio of RAM), plus pages in
 * flight. Writes cached up to that much are checked against the limit only
 * at writeback, so a limit much larger than this loses little exactness to
 * the cache, and a small one is better served without it. */
static uint64_t dirty_cache_bound(void)
{
	struct sysinfo si;
	uint64_t ram = sysinfo(&si) == 0 ? (uint64_t)si.totalram * si.mem_unit : 0;
	uint64_t threshold = read_u64_file("/proc/sys/vm/dirty_bytes");
	if (threshold == 0) {
		uint64_t ratio = read_u64_file("/proc/sys/vm/dirty_ratio");
		threshold = ram / 100 * (ratio ? ratio : 20);
	}
	return 2 * (threshold / 100) + (4u << 20);
}

/* 16x: the cache then holds at most a sixteenth of the limit. */
bool write_cache_suits_limit(uint64_t size)
{
	return size == 0 || size >= 16 * dirty_cache_bound();
}

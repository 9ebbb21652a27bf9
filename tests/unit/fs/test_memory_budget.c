/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fs/memory_budget.c (TAP): the memory cgroup limits and the
 * room left under them, read from made-up /proc/self/cgroup and mountinfo
 * files over made-up cgroup v2 and v1 hierarchies (a machine has one kind
 * in use; both are tested here). */
#include "memory_budget.h"

#include "tap.h"
#include "tmptree.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp[] = "/tmp/memoverlay-test-budget-XXXXXX";

static void put(const char *rel, const char *text)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", tmp, rel);
	/* make the parent directories */
	for (char *s = strchr(p + strlen(tmp) + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = '\0';
		mkdir(p, 0755);
		*s = '/';
	}
	if (!text)
		return;
	FILE *f = fopen(p, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		diag("write %s: %s", rel, strerror(errno));
}

static struct cgroup_memory read_back(const char *cgroup, const char *mountinfo)
{
	char c[4096], m[4096];
	snprintf(c, sizeof(c), "%s/%s", tmp, cgroup);
	snprintf(m, sizeof(m), "%s/%s", tmp, mountinfo);
	return cgroup_memory_of(c, m);
}

int main(void)
{
	if (!mkdtemp(tmp)) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	char line[8192];

	/* v2: /sys/fs/cgroup/a/b; "a" is limited to 1 GiB with 900 MiB in use,
	 * "b" to 2 GiB with 100 MiB: the limit is a's, so is the room. */
	put("v2/a/memory.max", "1073741824\n");
	put("v2/a/memory.current", "943718400\n");
	put("v2/a/b/memory.max", "2147483648\n");
	put("v2/a/b/memory.current", "104857600\n");
	put("v2/memory.max", NULL);
	snprintf(line, sizeof(line),
		 "25 1 0:22 / / rw - ext4 /dev/vda rw\n"
		 "30 25 0:26 / %s/v2 rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", tmp);
	put("mountinfo.v2", line);
	put("cgroup.v2", "0::/a/b\n");
	struct cgroup_memory cm = read_back("cgroup.v2", "mountinfo.v2");
	is_int(cm.limit, 1073741824, "v2: the smallest limit up the tree");
	is_int(cm.room, 1073741824 - 943718400, "v2: the least room under one of them");

	/* "max" is no limit; no limit anywhere: room is unbounded */
	put("v2/a/memory.max", "max\n");
	put("v2/a/b/memory.max", "max\n");
	cm = read_back("cgroup.v2", "mountinfo.v2");
	ok(cm.limit == 0 && cm.room == UINT64_MAX, "v2: \"max\" everywhere is no limit");

	/* usage above the limit (it happens, briefly): no room, not a wrap */
	put("v2/a/b/memory.max", "1000\n");
	put("v2/a/b/memory.current", "5000\n");
	cm = read_back("cgroup.v2", "mountinfo.v2");
	ok(cm.limit == 1000 && cm.room == 0, "v2: usage over the limit leaves no room");

	/* v1: the memory controller's own hierarchy, a huge number for none */
	put("v1/memory/ci/memory.limit_in_bytes", "536870912\n");
	put("v1/memory/ci/memory.usage_in_bytes", "134217728\n");
	put("v1/memory/memory.limit_in_bytes", "9223372036854771712\n");
	put("v1/memory/memory.usage_in_bytes", "8000000000\n");
	snprintf(line, sizeof(line),
		 "25 1 0:22 / / rw - ext4 /dev/vda rw\n"
		 "31 25 0:27 / %s/v1/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
		 "32 25 0:28 / %s/v1/memory rw - cgroup cgroup rw,memory\n", tmp, tmp);
	put("mountinfo.v1", line);
	put("cgroup.v1", "5:cpu,cpuacct:/ci\n4:memory:/ci\n0::/ci\n");
	cm = read_back("cgroup.v1", "mountinfo.v1");
	is_int(cm.limit, 536870912, "v1: the memory hierarchy's limit");
	is_int(cm.room, 536870912 - 134217728, "v1: room under it; the root's huge number is none");

	cm = read_back("cgroup.none", "mountinfo.v1");
	ok(cm.limit == 0 && cm.room == UINT64_MAX, "no cgroup file: no limit");
	put("cgroup.cpu", "5:cpu,cpuacct:/ci\n");
	cm = read_back("cgroup.cpu", "mountinfo.v1");
	ok(cm.limit == 0 && cm.room == UINT64_MAX, "no memory controller: no limit");

	ok(write_cache_suits_limit(0), "no limit: the write cache may stay");
	ok(!write_cache_suits_limit(64u << 20), "64 MiB: too small for the write cache");
	ok(upper_default_size() > 0, "a default size on this machine");
	ok(memory_room() > 0, "some memory to be had on this machine");

	tmptree_remove(tmp);
	return tap_done();
}

/* SPDX-License-Identifier: Apache-2.0 */
/* mountinfo.c: see mountinfo.h. */
#include "mountinfo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mountinfo_unescape(char *s)
{
	char *w = s;
	for (char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

static long user_id_of(const char *super_opts)
{
	for (const char *p = super_opts; p && *p;) {
		if (strncmp(p, "user_id=", 8) == 0)
			return strtol(p + 8, NULL, 10);
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return -1;
}

int mountinfo_find(const char *mountpoint, bool fuse_only, struct mount_entry *out)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -1;
	char *line = NULL;
	size_t cap = 0;
	int found = -1;
	while (getline(&line, &cap, f) > 0) {
		char majmin[32], mp[4096], fstype[64], super[1024] = "";
		char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		if (sscanf(line, "%*s %*s %31s %*s %4095s", majmin, mp) != 2 ||
		    sscanf(sep + 3, "%63s %*s %1023s", fstype, super) < 1)
			continue;
		if (fuse_only && strncmp(fstype, "fuse", 4) != 0)
			continue;
		mountinfo_unescape(mp);
		if (strcmp(mp, mountpoint) != 0)
			continue;
		/* the last one listed is on top */
		snprintf(out->dev, sizeof(out->dev), "%s", majmin);
		snprintf(out->fstype, sizeof(out->fstype), "%s", fstype);
		out->user_id = user_id_of(super);
		found = 0;
	}
	free(line);
	fclose(f);
	return found;
}

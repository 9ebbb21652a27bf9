/* SPDX-License-Identifier: Apache-2.0 */
/* caller.c: what the process behind a request may do, beyond the ids FUSE
 * gives: its supplementary groups and CAP_FSETID, read from its /proc
 * status. For the decisions the kernel leaves to a FUSE server. */
#include "memoverlay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The caller's /proc status ("Groups:", "CapEff:"), NUL-terminated, or NULL.
 * It is the calling thread's: credentials are per thread. */
static char *caller_status(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (len + 1 == cap) {
			/* 65536 groups of up to 10 digits: a little over 700 KiB */
			char *grown = cap < (1u << 20) ? realloc(buf, cap * 2) : NULL;
			if (!grown) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = grown;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n < 0) {
				free(buf);
				buf = NULL;
			}
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	if (buf)
		buf[len] = '\0';
	return buf;
}

/* The value of "KEY:" at the start of a line of a status text, or NULL. */
static const char *status_field(const char *status, const char *key)
{
	size_t klen = strlen(key);
	for (const char *line = status; line;) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':')
			return line + klen + 1;
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return NULL;
}

/* Whether a status text says its process has capability CAP in effect. */
static bool status_capable(const char *status, int cap)
{
	const char *caps = status_field(status, "CapEff");
	return caps && ((strtoull(caps, NULL, 16) >> cap) & 1);
}

bool caller_capable(fuse_req_t req, int cap)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	char *status = ctx->pid > 0 ? caller_status(ctx->pid) : NULL;
	bool ok = status && status_capable(status, cap);
	free(status);
	return ok;
}

bool caller_in_group_or_capable(fuse_req_t req, gid_t gid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->gid == gid)
		return true;
	char *status = ctx->pid > 0 ? caller_status(ctx->pid) : NULL;
	if (!status)
		return false; /* nothing shows it may: as for a caller that may not */
	bool ok = false;
	const char *groups = status_field(status, "Groups");
	while (groups && !ok) {
		char *end;
		unsigned long g = strtoul(groups, &end, 10);
		if (end == groups)
			break; /* the end of the line */
		ok = g == (unsigned long)gid;
		groups = end;
	}
	if (!ok)
		ok = status_capable(status, CAP_FSETID);
	free(status);
	return ok;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* control_proto.c: see control_proto.h. Input is untrusted (any local
 * process may connect before the daemon has checked who it is): the
 * parser compares whole strings, and fuzzing covers it
 * (tests/fuzz/fuzz_control.c). */
#include "control_proto.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const struct {
	const char *text;
	enum ctl_verb verb;
} verbs[] = {
	{ CTL_MAGIC " stats", CTL_STATS },
	{ CTL_MAGIC " export tar", CTL_EXPORT_TAR },
	{ CTL_MAGIC " sync", CTL_SYNC },
};

int ctl_parse_request(const void *buf, size_t len, struct ctl_request *out)
{
	if (!buf || len == 0 || len > CTL_MAX_REQUEST)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		size_t k = strlen(verbs[i].text);
		if (k == len && memcmp(buf, verbs[i].text, k) == 0) {
			out->verb = verbs[i].verb;
			return 0;
		}
	}
	return -EINVAL;
}

size_t ctl_format_request(const struct ctl_request *req, char *buf, size_t cap)
{
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		if (verbs[i].verb != req->verb)
			continue;
		size_t k = strlen(verbs[i].text);
		if (k > cap)
			return 0;
		memcpy(buf, verbs[i].text, k);
		return k;
	}
	return 0;
}

int ctl_read_full(int fd, void *buf, size_t len, int eof_err)
{
	size_t got = 0;
	while (got < len) {
		ssize_t k = read(fd, (char *)buf + got, len - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno; /* EAGAIN: the peer's time ran out (SO_RCVTIMEO) */
		if (k == 0)
			return -eof_err;
		got += (size_t)k;
	}
	return 0;
}

int ctl_recv_request(int fd, struct ctl_request *out)
{
	uint32_t len;
	char body[CTL_MAX_REQUEST];
	int res = ctl_read_full(fd, &len, sizeof(len), EINVAL);
	if (res < 0)
		return res;
	if (len == 0 || len > CTL_MAX_REQUEST)
		return -EINVAL; /* refused before reading it */
	res = ctl_read_full(fd, body, len, EINVAL);
	if (res < 0)
		return res;
	return ctl_parse_request(body, len, out);
}

/* euid as the initial user namespace knows it (/proc/self/uid_map), so
 * that two users' namespaces, both root inside, never pick the same
 * /tmp directory; euid itself where the map says nothing. */
static unsigned long outer_uid(uid_t euid)
{
	FILE *f = fopen("/proc/self/uid_map", "re");
	unsigned long in, out, count, res = euid;
	while (f && fscanf(f, "%lu %lu %lu", &in, &out, &count) == 3) {
		if (euid >= in && euid - in < count) {
			res = out + (euid - in);
			break;
		}
	}
	if (f)
		fclose(f);
	return res;
}

int control_dir(uid_t euid, bool initial_root, char *buf, size_t cap)
{
	int k;
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	struct stat st;
	char run_user[64];
	unsigned long outer = outer_uid(euid);
	/* in a user namespace the user's runtime dir still shows as its own */
	snprintf(run_user, sizeof(run_user), "/run/user/%lu", outer);
	if (euid == 0 && initial_root)
		k = snprintf(buf, cap, "/run/memoverlay");
	else if (xdg && xdg[0] == '/')
		k = snprintf(buf, cap, "%s/memoverlay", xdg);
	else if (stat(run_user, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == euid)
		k = snprintf(buf, cap, "%s/memoverlay", run_user);
	else
		k = snprintf(buf, cap, "/tmp/memoverlay-%lu", outer);
	return k < 0 || (size_t)k >= cap ? -ENAMETOOLONG : 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the control channel's request reader
 * (fs/control_proto.c): the bytes any local process may send the daemon
 * before it has checked who is asking. Each input goes through the same
 * path as a connection: written into one end of a socket pair, read by
 * ctl_recv_request() from the other (length prefix, body, parse), and
 * given to ctl_parse_request() directly as a body too. Must never crash,
 * read past what it was given, or accept anything but the exact forms. */
#include "control_proto.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void check_verb(const struct ctl_request *req)
{
	if (req->verb != CTL_STATS && req->verb != CTL_EXPORT_TAR && req->verb != CTL_SYNC)
		abort();
	/* what was accepted is exactly what a client sends */
	char buf[CTL_MAX_REQUEST];
	size_t k = ctl_format_request(req, buf, sizeof(buf));
	struct ctl_request again;
	if (!k || ctl_parse_request(buf, k, &again) != 0 || again.verb != req->verb)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ctl_request req;
	if (ctl_parse_request(data, size, &req) == 0) {
		check_verb(&req);
		if (size <= strlen(CTL_MAGIC) || memcmp(data, CTL_MAGIC " ", strlen(CTL_MAGIC) + 1))
			abort();
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return 0;
	/* inputs are at most -max_len (4096): they fit the socket buffer */
	size_t off = 0;
	while (off < size) {
		ssize_t k = write(sv[0], data + off, size - off);
		if (k <= 0)
			break;
		off += (size_t)k;
	}
	close(sv[0]); /* the peer is gone: a cut request is EINVAL, not a hang */
	int res = ctl_recv_request(sv[1], &req);
	if (res == 0)
		check_verb(&req);
	else if (res != -EINVAL)
		abort();
	close(sv[1]);
	return 0;
}

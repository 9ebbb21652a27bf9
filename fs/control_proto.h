/* SPDX-License-Identifier: Apache-2.0 */
/* control_proto.h: the wire format between memoverlay-ctl and the daemon
 * (control_proto.c), shared by both sides.
 *
 * One request per connection, on a unix stream socket:
 *   request:  u32 length (host order, at most CTL_MAX_REQUEST), then that
 *             many bytes of text: "memoverlay-ctl/1 VERB[ ARG]", VERB one of
 *             stats | export | sync; export takes ARG "tar".
 *   reply:    frames, each u32 length then that many bytes; a frame of
 *             length 0 ends the data, and is followed by an i32 status:
 *             0, or the errno that ended the request (EACCES for a peer
 *             that may not ask, EINVAL for a malformed request).
 * A length-prefixed request rather than a line: the daemon reads exactly
 * what it was told, never scans for a terminator, and refuses anything
 * longer before reading it. Frames let the daemon say "the export failed
 * half-way" after the data started, which a plain byte stream cannot. */
#ifndef MEMOVERLAY_CONTROL_PROTO_H
#define MEMOVERLAY_CONTROL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CTL_MAGIC "memoverlay-ctl/1"
#define CTL_MAX_REQUEST 256u
#define CTL_MAX_FRAME (1u << 20)

enum ctl_verb { CTL_STATS = 1, CTL_EXPORT_TAR, CTL_SYNC };

struct ctl_request {
	enum ctl_verb verb;
};

/* Parses a request body (not NUL-terminated, any bytes). 0, or -EINVAL
 * for anything but the exact forms above. */
int ctl_parse_request(const void *buf, size_t len, struct ctl_request *out);
/* Reads exactly len bytes from fd: 0, -errno, or -eof_err if the peer
 * closes before (a cut-off request, or a daemon gone mid-reply). */
int ctl_read_full(int fd, void *buf, size_t len, int eof_err);
/* Reads one request from fd (length, then body) and parses it: 0,
 * -EINVAL (malformed, too long, cut short), or -errno of the read
 * (-EAGAIN: the peer sent nothing in time). */
int ctl_recv_request(int fd, struct ctl_request *out);
/* Writes the body for req into buf; its length, or 0 if it does not fit. */
size_t ctl_format_request(const struct ctl_request *req, char *buf, size_t cap);

/* Where a daemon running as euid keeps its channel sockets:
 * /run/memoverlay for root of the initial user namespace; else
 * $XDG_RUNTIME_DIR/memoverlay, /run/user/UID/memoverlay where that is
 * the user's, or /tmp/memoverlay-UID (UID: euid as the initial user
 * namespace knows it). Also what the client looks in. 0, or
 * -ENAMETOOLONG. */
int control_dir(uid_t euid, bool initial_root, char *buf, size_t cap);

#endif

/* kernel_io.c: reading requests from and writing replies to /dev/fuse,
 * with the kernel's ordering made visible to ThreadSanitizer (see
 * kernel_io.h for why and how); in other builds libfuse does it alone. */
#include "memoverlay.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#ifdef KERNEL_IO_ANNOTATE
#include <sanitizer/tsan_interface.h>

/* Handles the reply this worker is about to send was made with (two for
 * copy_file_range). Cleared when the reply is sent and when the next
 * request arrives, so a reply that never got written names nothing later. */
static _Thread_local struct handle_link *reply_handles[2];

void kernel_io_reply_for(struct handle_link *handle)
{
	__atomic_add_fetch(&handle->replies_due, 1, __ATOMIC_RELAXED);
	reply_handles[reply_handles[0] ? 1 : 0] = handle;
}

void kernel_io_last_request(struct handle_link *handle)
{
	__tsan_acquire(handle);
	unsigned due = __atomic_load_n(&handle->replies_due, __ATOMIC_RELAXED);
	if (due) {
		fprintf(stderr, "memoverlay: RELEASE of a handle with %u replies still due: the "
			"kernel order kernel_io.h relies on does not hold\n", due);
		abort();
	}
}

static void forget_handles(bool sent)
{
	for (int i = 0; i < 2; i++) {
		struct handle_link *h = reply_handles[i];
		if (!h)
			continue;
		__atomic_sub_fetch(&h->replies_due, 1, __ATOMIC_RELAXED);
		if (sent)
			__tsan_release(h); /* last: RELEASE may free h after it */
		reply_handles[i] = NULL;
	}
}

static void reply_leaves(void)
{
	forget_handles(true);
}

/* A reply that was never written (libfuse failed to build it) leaves its
 * handles here; the next request on this worker drops them. */
static void request_arrives(void)
{
	forget_handles(false);
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
	/* A notification (unique 0, e.g. an op's inval_inode before its own
	 * reply) is not the reply its handles wait for. */
	if (count > 0 && iov[0].iov_len >= sizeof(struct fuse_out_header) &&
	    ((const struct fuse_out_header *)iov[0].iov_base)->unique != 0)
		reply_leaves();
	return writev(fd, iov, count);
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)userdata;
	ssize_t res = read(fd, buf, len);
	request_arrives();
	return res;
}

static ssize_t io_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			      unsigned int flags, void *userdata)
{
	(void)userdata;
	reply_leaves();
	return splice(fdin, offin, fdout, offout, len, flags);
}

static ssize_t io_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
				 unsigned int flags, void *userdata)
{
	(void)userdata;
	ssize_t res = splice(fdin, offin, fdout, offout, len, flags);
	request_arrives();
	return res;
}

int kernel_io_install(struct fuse_session *se)
{
	static const struct fuse_custom_io io = {
		.writev = io_writev,
		.read = io_read,
		.splice_send = io_splice_send,
		.splice_receive = io_splice_receive,
	};
	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}
#else
/* Nothing to add to libfuse's own reads and writes: they are left to it
 * (libfuse 3.18 leaves fuse_session_custom_io out unless built with it). */
int kernel_io_install(struct fuse_session *se)
{
	(void)se;
	return 0;
}
#endif

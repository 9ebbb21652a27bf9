/* kernel_io.c: reading requests from and writing replies to /dev/fuse,
 * with the kernel's ordering made visible to ThreadSanitizer (see
 * kernel_io.h for why and how). */
#include "kernel_io.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#ifdef KERNEL_IO_ANNOTATE
#include <sanitizer/tsan_interface.h>

/* Handles the reply this worker is about to send was made with (two for
 * copy_file_range). Cleared when the reply is sent and when the next
 * request arrives, so a reply that never got written names nothing later. */
static _Thread_local const void *reply_handles[2];

void kernel_io_reply_for(const void *handle)
{
	reply_handles[reply_handles[0] ? 1 : 0] = handle;
}

void kernel_io_last_request(const void *handle)
{
	__tsan_acquire((void *)handle);
}

static void reply_leaves(void)
{
	for (int i = 0; i < 2; i++) {
		if (reply_handles[i])
			__tsan_release((void *)reply_handles[i]);
		reply_handles[i] = NULL;
	}
}

static void request_arrives(void)
{
	reply_handles[0] = reply_handles[1] = NULL;
}
#else
static void reply_leaves(void) {}
static void request_arrives(void) {}
#endif

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
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

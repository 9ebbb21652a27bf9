/* kernel_io.h: the daemon's end of /dev/fuse, and the order the kernel
 * imposes on the requests it sends.
 *
 * The kernel sends RELEASE (RELEASEDIR) for a handle only once it has the
 * replies to every request it sent on that handle: each READ, WRITE, ...
 * holds a reference on the kernel's fuse_file until its reply is in, and a
 * request already read by the daemon is waited for without interruption.
 * So a worker may free a handle in RELEASE while another worker is still
 * returning from the read that used it, and that is safe: everything the
 * reader did to the handle came before its reply reached the kernel.
 *
 * ThreadSanitizer cannot see that order (it runs through the kernel) and
 * would report the close() of the handle's fd against the reader's pread()
 * (which libfuse makes while it builds the reply). Instead of hiding those
 * accesses, the order is annotated where it really happens: an op that used
 * a handle calls kernel_io_reply_for(handle) before it replies; the send
 * wrappers below release on the handle just before the reply is written to
 * /dev/fuse, after libfuse has read every byte of it; RELEASE calls
 * kernel_io_last_request(handle), an acquire, before freeing it. Outside
 * ThreadSanitizer builds these two are empty.
 *
 * The same builds check the claim itself: each handle counts the requests
 * on it whose reply is not yet written, and RELEASE aborts the daemon if
 * that count is not zero (the stress test runs this build). */
#ifndef KERNEL_IO_H
#define KERNEL_IO_H

#include <fuse_lowlevel.h>

#if defined(__SANITIZE_THREAD__)
#define KERNEL_IO_ANNOTATE 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KERNEL_IO_ANNOTATE 1
#endif
#endif

/* In ThreadSanitizer builds, routes libfuse's reads and writes of /dev/fuse
 * through this daemon (the same syscalls libfuse makes itself), which takes
 * a libfuse with fuse_session_custom_io() (3.14; 3.18 only when built with
 * it); elsewhere does nothing. Call after fuse_session_mount(); returns 0
 * or -errno. */
int kernel_io_install(struct fuse_session *se);

struct handle_link;
#ifdef KERNEL_IO_ANNOTATE
void kernel_io_reply_for(struct handle_link *handle);
void kernel_io_last_request(struct handle_link *handle);
#else
static inline void kernel_io_reply_for(struct handle_link *handle) { (void)handle; }
static inline void kernel_io_last_request(struct handle_link *handle) { (void)handle; }
#endif

#endif

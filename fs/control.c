/* SPDX-License-Identifier: Apache-2.0 */
/* control.c: the control channel (control.h).
 *
 * Why a socket file named after st_dev: a client finds it from the mount
 * point alone (its MAJ:MIN, read from mountinfo), whoever started the
 * daemon (mount.fuse3 passes no extra option). Not an abstract socket:
 * those belong to the network namespace, and a rootless daemon in
 * `unshare -Urm` (no new network namespace) would then answer to any
 * process of the host's namespace that guesses the name, and a daemon
 * with its own network namespace to none outside it; a file lives in the
 * mount namespace and directory the user can reach.
 *
 * Who may ask is checked here, per connection, with SO_PEERCRED: the
 * daemon's own euid and root. The socket file itself is mode 0666 on
 * purpose, so that check is what protects it (and is what the tests
 * exercise); the directory is the user's (or root's).
 *
 * One thread serves one client at a time: an export streams for as long
 * as the client reads, and must not take a FUSE worker from the mount.
 * A client that stalls is dropped after SEND_TIMEOUT_S; one that
 * disconnects ends its request at the next write (MSG_NOSIGNAL: EPIPE,
 * not SIGPIPE), and everything the request held is freed. */
#include "memoverlay.h"
#include "control.h"
#include "control_proto.h"
#include "export.h"
#include "mountinfo.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define REQUEST_TIMEOUT_S 5
#define SEND_TIMEOUT_S 60

struct control {
	struct ovl *fs;
	int listen_fd;
	int wake[2];            /* control_stop writes to wake[1] */
	pthread_t thread;
	bool running;           /* the thread was started */
	bool stop;              /* atomic */
	uid_t euid;
	pthread_mutex_t lock;   /* guards conn_fd; taken alone */
	int conn_fd;            /* the client being served, -1 */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* dir exists, is a directory (not a symlink) and is ours. */
static int make_dir(const char *dir, uid_t euid)
{
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	struct stat st;
	if (lstat(dir, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != euid)
		return -EPERM; /* someone else's: never put a socket there */
	if ((st.st_mode & 0022) && chmod(dir, 0755) < 0)
		return -errno;
	return 0;
}

/* ---- serving */

static int send_all(int fd, const void *a, size_t alen, const void *b, size_t blen)
{
	struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = blen ? 2 : 1 };
	while (iov[0].iov_len || iov[1].iov_len) {
		ssize_t k = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
		for (int i = 0; i < 2 && k > 0; i++) {
			size_t d = (size_t)k < iov[i].iov_len ? (size_t)k : iov[i].iov_len;
			iov[i].iov_base = (char *)iov[i].iov_base + d;
			iov[i].iov_len -= d;
			k -= (ssize_t)d;
		}
		if (!iov[0].iov_len) {
			msg.msg_iov = &iov[1];
			msg.msg_iovlen = 1;
		}
	}
	return 0;
}

/* tar_sink: the data as frames of at most CTL_MAX_FRAME. */
static int send_frames(void *arg, const void *buf, size_t len)
{
	int fd = *(int *)arg;
	const char *p = buf;
	while (len) {
		uint32_t k = len > CTL_MAX_FRAME ? CTL_MAX_FRAME : (uint32_t)len;
		int res = send_all(fd, &k, sizeof(k), p, k);
		if (res < 0)
			return res;
		p += k;
		len -= k;
	}
	return 0;
}

static void send_end(int fd, int err)
{
	struct {
		uint32_t zero;
		int32_t status;
	} end = { 0, err < 0 ? -err : err };
	(void)send_all(fd, &end, sizeof(end), NULL, 0);
}

static bool peer_allowed(const struct control *c, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred))
		return false;
	return cred.uid == c->euid || cred.uid == 0;
}

static void serve_client(struct control *c, int fd)
{
	struct ovl *fs = c->fs;
	bool allowed = peer_allowed(c, fd);
	/* a peer that will be refused gets a short while to send, so that
	 * nobody who may not ask can hold the one serving thread for long */
	struct timeval rt = { allowed ? REQUEST_TIMEOUT_S : 0, allowed ? 0 : 200000 },
		       st = { SEND_TIMEOUT_S, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof(rt));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof(st));
	struct ctl_request req;
	/* The request is read even from a peer that will be refused: closing
	 * with its bytes unread would reset the connection, and it would see
	 * ECONNRESET instead of the EACCES that says why. */
	int res = ctl_recv_request(fd, &req);
	if (!allowed) {
		send_end(fd, EACCES);
		return;
	}
	if (res < 0) {
		send_end(fd, res == -EAGAIN ? ETIMEDOUT : res == -EINVAL ? EINVAL : -res);
		return;
	}
	switch (req.verb) {
	case CTL_STATS: {
		char *json = stats_json(fs);
		res = json ? send_frames(&fd, json, strlen(json)) : -ENOMEM;
		free(json);
		break;
	}
	case CTL_EXPORT_TAR:
		res = export_tar(fs, send_frames, &fd, &c->stop);
		break;
	case CTL_SYNC:
		res = fs->wb ? writeback_all(fs) : -EOPNOTSUPP;
		break;
	default:
		res = -EINVAL;
	}
	send_end(fd, res);
}

static void *serve(void *arg)
{
	struct control *c = arg;
	for (;;) {
		struct pollfd pfd[2] = { { c->listen_fd, POLLIN, 0 }, { c->wake[0], POLLIN, 0 } };
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents || __atomic_load_n(&c->stop, __ATOMIC_RELAXED))
			break;
		int fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			/* out of fds or memory: the listener stays ready, so
			 * wait a little instead of spinning (ECONNABORTED and
			 * the like: the next one may do at once) */
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				poll(NULL, 0, 100);
			continue;
		}
		pthread_mutex_lock(&c->lock);
		c->conn_fd = fd;
		pthread_mutex_unlock(&c->lock);
		serve_client(c, fd);
		pthread_mutex_lock(&c->lock);
		c->conn_fd = -1;
		pthread_mutex_unlock(&c->lock);
		close(fd);
	}
	return NULL;
}

static void control_free(struct control *c)
{
	if (c->listen_fd >= 0)
		close(c->listen_fd);
	if (c->wake[0] >= 0)
		close(c->wake[0]);
	if (c->wake[1] >= 0)
		close(c->wake[1]);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

int control_open(struct ovl *fs)
{
	struct mount_entry me;
	char dir[PATH_MAX];
	if (mountinfo_find(fs->cfg.mountpoint, true, &me) < 0) {
		fprintf(stderr, "memoverlay: no FUSE mount on '%s' in mountinfo: no control "
			"channel\n", fs->cfg.mountpoint);
		return -1;
	}
	struct control *c = calloc(1, sizeof(*c));
	if (!c)
		return -1;
	c->fs = fs;
	c->listen_fd = c->conn_fd = -1;
	c->wake[0] = c->wake[1] = -1;
	c->euid = geteuid();
	pthread_mutex_init(&c->lock, NULL);
	int res = control_dir(c->euid, c->euid == 0 && in_initial_user_ns(), dir, sizeof(dir));
	if (res == 0)
		res = make_dir(dir, c->euid);
	if (res == 0 && (size_t)snprintf(c->path, sizeof(c->path), "%s/%s.sock", dir, me.dev) >=
				sizeof(c->path))
		res = -ENAMETOOLONG;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (res == 0) {
		memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
		/* a leftover of a daemon that died: the device number is ours now */
		if (unlink(c->path) < 0 && errno != ENOENT)
			res = -errno;
	}
	if (res == 0 && (c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		res = -errno;
	if (res == 0 && bind(c->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		res = -errno;
	if (res == 0 && (chmod(c->path, 0666) < 0 || listen(c->listen_fd, 16) < 0))
		res = -errno;
	if (res == 0 && pipe2(c->wake, O_CLOEXEC) < 0)
		res = -errno;
	if (res < 0) {
		fprintf(stderr, "memoverlay: no control channel at '%s': %s\n",
			c->path[0] ? c->path : dir, strerror(-res));
		if (c->listen_fd >= 0 && c->path[0])
			unlink(c->path);
		control_free(c);
		return -1;
	}
	fs->ctl = c;
	return 0;
}

void control_run(struct ovl *fs)
{
	struct control *c = fs->ctl;
	if (!c)
		return;
	int res = pthread_create(&c->thread, NULL, serve, c);
	if (res == 0) {
		c->running = true;
		return;
	}
	fprintf(stderr, "memoverlay: no control channel: %s\n", strerror(res));
	unlinkat(AT_FDCWD, c->path, 0);
	control_free(c);
	fs->ctl = NULL;
}

void control_stop(struct ovl *fs)
{
	struct control *c = fs->ctl;
	if (!c)
		return;
	if (!c->running) { /* made, never served: start-up failed */
		unlinkat(AT_FDCWD, c->path, 0);
		control_free(c);
		fs->ctl = NULL;
		return;
	}
	__atomic_store_n(&c->stop, true, __ATOMIC_RELAXED);
	char one = 1;
	if (write(c->wake[1], &one, 1) < 0) {
		/* the flag alone ends it after the request under way */
	}
	pthread_mutex_lock(&c->lock);
	if (c->conn_fd >= 0)
		shutdown(c->conn_fd, SHUT_RDWR); /* a stalled client ends now */
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	unlinkat(AT_FDCWD, c->path, 0);
	control_free(c);
	fs->ctl = NULL;
}

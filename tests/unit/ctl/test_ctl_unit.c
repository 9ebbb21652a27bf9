/* Unit tests (TAP) for memoverlay-ctl's pieces that need no mount: the
 * pax writer (fs/tar_writer.c) read back by the client's unpacker
 * (tools/ctl_unpack.c) into a real directory, and the request wire format
 * (fs/control_proto.c) over a socket pair. */
#include "control_proto.h"
#include "ctl_unpack.h"
#include "tar_writer.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

struct mem {
	char *buf;
	size_t len, cap, pos;
	int sinks;
};

static int mem_sink(void *arg, const void *buf, size_t len)
{
	struct mem *m = arg;
	if (m->len + len > m->cap) {
		m->cap = (m->len + len) * 2;
		m->buf = realloc(m->buf, m->cap);
	}
	memcpy(m->buf + m->len, buf, len);
	m->len += len;
	m->sinks++;
	return 0;
}

static int failing_sink(void *arg, const void *buf, size_t len)
{
	(void)arg;
	(void)buf;
	(void)len;
	return -EPIPE;
}

static ssize_t mem_source(void *arg, void *buf, size_t len)
{
	struct mem *m = arg;
	size_t k = m->len - m->pos < len ? m->len - m->pos : len;
	memcpy(buf, m->buf + m->pos, k);
	m->pos += k;
	return (ssize_t)k;
}

static void test_tar_round_trip(void)
{
	struct mem m = { 0 };
	struct tar_writer tw;
	ok(tar_init(&tw, mem_sink, &m) == 0, "tar_init");
	/* 300 bytes in components of 100: needs the pax path (ustar: 100) */
	char longname[301];
	memset(longname, 'n', 300);
	longname[300] = '\0';
	memcpy(longname, "dir/", 4);
	longname[100] = longname[200] = '/';
	struct tar_xattr x[] = { { "user.bin", "\0\xff=\n", 4 }, { "user.text", "v", 1 } };
	struct tar_entry dir = { .path = "dir", .type = '5', .mode = 0750, .uid = 0, .gid = 0,
				 .mtime = 1000, .mtime_nsec = 5 };
	struct tar_entry f = { .path = longname, .type = '0', .mode = 04755, .uid = 4000000,
			       .gid = 7, .size = 1000, .mtime = 1234567890, .mtime_nsec = 123456789,
			       .xattrs = x, .nxattrs = 2 };
	struct tar_entry ln = { .path = "dir/hard", .type = '1', .linkname = longname };
	struct tar_entry sl = { .path = "dir/sym", .type = '2', .mode = 0777, .mtime = 99,
				.linkname = "../target/that/is/long/enough/to/need/a/pax/record/"
					    "because/it/is/more/than/a/hundred/bytes/long/xxxxxxxxx" };
	struct tar_entry wh = { .path = "dir/.wh.gone", .type = '0' };
	struct tar_entry opq = { .path = "dir/.wh..wh..opq", .type = '0' };
	char data[1000];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (char)(i * 7);
	ok(tar_header(&tw, &dir) == 0, "directory header");
	ok(tar_header(&tw, &f) == 0 && tar_data(&tw, data, sizeof(data)) == 0 &&
	   tar_pad(&tw, sizeof(data)) == 0, "file with a long name, big uid, ns mtime, xattrs");
	ok(tar_header(&tw, &ln) == 0 && tar_header(&tw, &sl) == 0, "hard link, long symlink");
	ok(tar_header(&tw, &wh) == 0 && tar_header(&tw, &opq) == 0, "whiteout, opaque marker");
	ok(tar_finish(&tw) == 0, "finish");
	tar_free(&tw);
	is_int(m.len % 512, 0, "whole blocks");
	ok(m.len >= 1024 && !memcmp(m.buf + m.len - 1024, (char[1024]){ 0 }, 1024),
	   "ends with two zero blocks");

	char root[] = "/tmp/ctl-unit.XXXXXX";
	ok(mkdtemp(root) != NULL, "scratch dir");
	char out[128];
	snprintf(out, sizeof(out), "%s/up", root);
	int res = unpack_to_dir(mem_source, &m, out, 1);
	bool root_user = geteuid() == 0;
	ok(res == 0 || !root_user, "unpacked (%d)", res);
	char p[1024];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", out, longname);
	ok(stat(p, &st) == 0 && st.st_size == 1000 && st.st_mtim.tv_sec == 1234567890 &&
	   st.st_mtim.tv_nsec == 123456789, "file: size and ns mtime");
	if (root_user)
		ok(st.st_uid == 4000000 && st.st_gid == 7 && (st.st_mode & 07777) == 04755,
		   "file: owner past 7 octal digits, setuid mode");
	char back[1000];
	int fd = open(p, O_RDONLY);
	ok(fd >= 0 && read(fd, back, sizeof(back)) == 1000 && !memcmp(back, data, 1000),
	   "file: data");
	if (fd >= 0)
		close(fd);
	char xv[16];
	ssize_t xl = lgetxattr(p, "user.bin", xv, sizeof(xv));
	ok(xl == 4 && !memcmp(xv, "\0\xff=\n", 4), "binary xattr value");
	struct stat hs;
	snprintf(p, sizeof(p), "%s/dir/hard", out);
	ok(stat(p, &hs) == 0 && hs.st_ino == st.st_ino && hs.st_nlink == 2, "hard link");
	char target[256];
	snprintf(p, sizeof(p), "%s/dir/sym", out);
	ssize_t tl = readlink(p, target, sizeof(target) - 1);
	ok(tl > 100 && (size_t)tl == strlen(sl.linkname), "long symlink target");
	snprintf(p, sizeof(p), "%s/dir/gone", out);
	if (root_user)
		ok(lstat(p, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0),
		   "whiteout: char 0/0");
	snprintf(p, sizeof(p), "%s/dir", out);
	ok(lgetxattr(p, "user.overlay.opaque", xv, sizeof(xv)) == 1 && xv[0] == 'y',
	   "opaque marker: the xattr (userxattr)");
	ok(stat(p, &st) == 0 && st.st_mtim.tv_sec == 1000 && (st.st_mode & 07777) == 0750,
	   "directory: mode, and mtime set after its entries");
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	ok(system(cmd) == 0, "cleanup");

	/* a sink that fails stops the archive, and says so ever after */
	ok(tar_init(&tw, failing_sink, NULL) == 0, "tar_init");
	static char big[2 << 20];
	struct tar_entry bf = { .path = "big", .type = '0', .size = sizeof(big) };
	tar_header(&tw, &bf);
	is_int(tar_data(&tw, big, sizeof(big)), -EPIPE, "the sink's error comes back");
	is_int(tar_finish(&tw), -EPIPE, "and stays");
	tar_free(&tw);
	free(m.buf);

	/* a truncated archive is an error, not a success */
	struct mem cut = { 0 };
	tar_init(&tw, mem_sink, &cut);
	struct tar_entry sf = { .path = "f", .type = '0', .size = 5000 };
	tar_header(&tw, &sf);
	tar_data(&tw, big, 5000);
	tar_pad(&tw, 5000);
	tar_finish(&tw);
	tar_free(&tw);
	cut.len = 512 + 1000;
	char root2[] = "/tmp/ctl-unit.XXXXXX";
	ok(mkdtemp(root2) != NULL, "scratch dir");
	snprintf(out, sizeof(out), "%s/up", root2);
	ok(unpack_to_dir(mem_source, &cut, out, 1) < 0, "a cut archive fails");
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root2);
	ok(system(cmd) == 0, "cleanup");
	free(cut.buf);
}

static int send_raw(int fd, const void *buf, size_t len)
{
	return write(fd, buf, len) == (ssize_t)len ? 0 : -1;
}

static int recv_after(const void *buf, size_t len, struct ctl_request *req)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return -999;
	send_raw(sv[0], buf, len);
	close(sv[0]);
	int res = ctl_recv_request(sv[1], req);
	close(sv[1]);
	return res;
}

static void test_requests(void)
{
	enum ctl_verb verbs[] = { CTL_STATS, CTL_EXPORT_TAR, CTL_SYNC };
	for (size_t i = 0; i < 3; i++) {
		struct ctl_request req = { .verb = verbs[i] }, back;
		char msg[4 + CTL_MAX_REQUEST];
		uint32_t len = (uint32_t)ctl_format_request(&req, msg + 4, CTL_MAX_REQUEST);
		memcpy(msg, &len, 4);
		ok(len > 0 && recv_after(msg, 4 + len, &back) == 0 && back.verb == verbs[i],
		   "verb %d: formatted, sent, read back", (int)verbs[i]);
	}
	struct ctl_request r;
	is_int(ctl_parse_request("memoverlay-ctl/1 stats ", 23, &r), -EINVAL, "trailing space");
	is_int(ctl_parse_request("memoverlay-ctl/1 stat", 21, &r), -EINVAL, "a prefix");
	is_int(ctl_parse_request("memoverlay-ctl/2 stats", 22, &r), -EINVAL, "another version");
	is_int(ctl_parse_request("memoverlay-ctl/1 stats\0", 23, &r), -EINVAL, "a NUL after");
	is_int(ctl_parse_request("", 0, &r), -EINVAL, "empty");
	uint32_t zero = 0, huge = 0xffffffffu, cut = 40;
	is_int(recv_after(&zero, 4, &r), -EINVAL, "length 0");
	is_int(recv_after(&huge, 4, &r), -EINVAL, "length past the limit: refused unread");
	char partial[8];
	memcpy(partial, &cut, 4);
	memcpy(partial + 4, "memo", 4);
	is_int(recv_after(partial, 8, &r), -EINVAL, "cut short");
	is_int(recv_after("ab", 2, &r), -EINVAL, "cut inside the length");
}

int main(void)
{
	test_tar_round_trip();
	test_requests();
	printf("1..%d\n", tap_count);
	return tap_failed ? 1 : 0;
}

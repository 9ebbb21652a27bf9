/* seccomp.c: once start-up is done, the daemon keeps only the system calls
 * that serving the mount takes — an allowlist, loaded with libseccomp for
 * every thread (TSYNC).
 *
 * Everything that needs more has happened by then: parsing, opening the
 * layers and the filestore, mounting, forking the unmount helper, dropping
 * capabilities. What is left is libfuse's session loop (requests read or
 * spliced from /dev/fuse, replies written or spliced back), the ops (opens
 * beneath the layer roots, stat, xattrs, readdir, reads and in-kernel
 * copies between fds), the allocator and worker threads, signals, and the
 * unmount at the end. The list below was found by reading that code
 * (fs/, the loop, reply and splice paths of libfuse 3.14 and 3.18, glibc)
 * and checked by running the integration tests with the filter on.
 *
 * Any other call stops the daemon: SCMP_ACT_TRAP sends SIGSYS, whose handler
 * writes one line naming the call to stderr and then dies of SIGSYS. Kill,
 * not EPERM: the daemon itself never makes such a call, so one that comes
 * is a bug or code an attacker got to run, and neither should go on serving
 * files; an error return would let it retry, or take a fallback path, and
 * hide what happened. The mount then answers ENOTCONN, as after any crash.
 * stderr is the terminal (or the caller's pipe) with -f and /dev/null for a
 * background daemon, so the kernel logs the violation too (CTL_LOG: an
 * audit record "type=1326 ... syscall=N" in the kernel log).
 *
 * Two calls fail instead of stopping the daemon, on purpose: clone3 with
 * ENOSYS (its flags are in memory, where a filter cannot look; glibc then
 * falls back to clone, which is allowed for threads only), and clone
 * without CLONE_THREAD — a fork — with EPERM: the one fork left in the code
 * is libfuse's, at the end, running fusermount3 when a plain user's umount2
 * fails; no_new_privs has made that useless anyway (the unmount helper
 * unmounts). The kernel logs these refusals too: one clone3 record for each
 * worker thread started with -o max_threads=N.
 *
 * FUSE over io_uring (transport.c): libfuse sets up its rings while it
 * answers the kernel's INIT, which the daemon reads under the filter, so
 * that no request is ever served without one. Setting up takes more calls
 * than serving: a first filter allows them (ring_setup below), and once
 * INIT is answered a second one, stacked on it, allows of io_uring only
 * io_uring_enter, and that only if a ring runs. So io_uring_setup, the call
 * whose attack surface makes container runtimes refuse io_uring, is gone
 * before the starter exits.
 */
#include "seccomp.h"
#include "memoverlay.h"

#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <unistd.h>

/* Sanitizer runtimes make calls of their own under the filter (below). */
#if defined(__SANITIZE_ADDRESS__)
#define SECCOMP_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define SECCOMP_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SECCOMP_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define SECCOMP_TSAN 1
#endif
#endif

/* clone's flags are its first argument, except on s390x. */
#if defined(__s390__)
#define CLONE_FLAGS_ARG(cmp, a, b) SCMP_A1(cmp, a, b)
#else
#define CLONE_FLAGS_ARG(cmp, a, b) SCMP_A0(cmp, a, b)
#endif

/* Allowed with any arguments. Names rather than numbers: libseccomp maps
 * them for the machine's architecture, and a name the architecture does not
 * have (poll or dup2 on arm64, which glibc replaces by ppoll and dup3) is
 * skipped. */
static const char *const allowed[] = {
	/* requests and replies on /dev/fuse (libfuse's loop, kernel_io.c), and
	 * libfuse's per-thread splice pipes, sized with fcntl (or, if that
	 * fails, to what /proc/sys/fs/pipe-max-size says) */
	"read", "writev", "splice", "vmsplice", "pipe2", "fcntl",
	/* the ops: lower objects opened beneath a layer root (openat2, or
	 * openat one component at a time), stat, readdir (fdopendir),
	 * symlinks, xattrs (by /proc/self/fd path), the readahead hint; the
	 * filestore (pread/pwrite, ftruncate, fallocate to reserve and punch,
	 * lseek for data and holes, copy_file_range and splice to copy up);
	 * a caller's /proc status (caller.c), /proc/meminfo and the memory
	 * cgroup files (fallocate's room: open, read); statfs (sysinfo);
	 * messages on stderr */
	"openat", "openat2", "close", "newfstatat", "lseek", "getdents64",
	"readlinkat", "getxattr", "lgetxattr", "llistxattr", "fadvise64",
	"pread64", "pwrite64", "write", "ftruncate", "fallocate",
	"copy_file_range", "sysinfo",
	/* memory: malloc, thread stacks, malloc_trim (madvise) */
	"mmap", "munmap", "mprotect", "madvise", "brk", "mremap",
	/* worker threads (-o max_threads=N; clone itself below) and their
	 * locks; malloc sizes its arenas by the CPUs it may run on */
	"futex", "set_robust_list", "rseq", "sched_getaffinity",
	/* signals: libfuse's SIGTERM/SIGINT/SIGHUP handlers (and their
	 * removal at the end), pthread_cancel of the workers at the end,
	 * abort(); a wait with a timeout resumed after a stop */
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "tgkill", "gettid", "getpid",
	"restart_syscall",
	/* upper timestamps (the vDSO, which falls back to the system call) */
	"clock_gettime",
	/* the rest of become_daemon() for a background daemon: chdir("/"),
	 * stdio onto /dev/null */
	"chdir", "dup2", "dup3",
	/* the end: libfuse's unmount (poll of /dev/fuse, geteuid, lstat of
	 * /etc/mtab, umount2 below; 3.18 also asks whether mtab needs an
	 * update, with getuid and access even where it is a symlink), waiting
	 * for the unmount helper */
	"poll", "ppoll", "geteuid", "getuid", "access", "faccessat", "wait4",
	"exit", "exit_group",
};

/* memoverlay-ctl's channel (control.c): its thread waits for clients
 * (poll, above), accepts one, checks who it is (getsockopt SO_PEERCRED),
 * sets its timeouts (setsockopt), reads the request (read) and sends
 * frames (sendmsg, MSG_NOSIGNAL); at the end it is woken (a pipe),
 * a stalled client is cut off (shutdown) and the socket file removed
 * (unlinkat). The socket is made before the filter. */
static const char *const control_allowed[] = {
	"accept4", "getsockopt", "setsockopt", "sendmsg", "shutdown", "unlinkat",
};

/* Starting FUSE over io_uring (libfuse 3.18, lib/fuse_uring.c, at INIT):
 * for each CPU a thread (clone, above) bound to its CPU, an eventfd (to
 * wake it at the end), a ring with /dev/fuse registered as its fixed file,
 * and request buffers from libnuma, mmap'ed and bound to the local node
 * (mbind); it reads the CPUs and nodes from /sys (openat, read). Then
 * the daemon proves the rings serve with a statfs of its own mount
 * (transport.c). */
static const char *const ring_setup[] = {
	"sched_setaffinity", "eventfd2", "io_uring_setup", "io_uring_register", "mbind",
	"io_uring_enter", "statfs",
};
/* Serving: each ring thread submits a reply and waits for the next
 * request in one call. At the end libfuse wakes them through their
 * eventfd (write), joins them, unmaps the rings and closes them. */
static const char *const ring_running[] = {
	"io_uring_enter",
};

/* With upperdir= only: the write-back (writeback.c) makes objects in
 * WORKDIR/work and renames them into the upper directory: files, dirs,
 * symlinks, nodes and whiteouts, hard links; owners, modes (chmod by
 * /proc path), times, xattrs; removals; syncfs before and after. */
static const char *const upperdir_allowed[] = {
	"mkdirat", "mknodat", "symlinkat", "linkat", "renameat", "renameat2", "unlinkat",
	"fchownat", "chmod", "fchmodat", "utimensat", "lsetxattr", "lremovexattr", "syncfs",
};

/* With passthrough=upper only: the private tmpfs of upper files
 * (upper_files.c): their removal (unlinkat, above), its use for statfs
 * and the filestore's limit, and its size lowered as the filestore grows
 * (fspick, fsconfig). */
static const char *const upper_files_allowed[] = {
	"fstatfs", "fspick", "fsconfig",
};

#if defined(SECCOMP_ASAN) || defined(SECCOMP_TSAN)
/* The sanitizer runtimes, in those builds only. Both make their own raw
 * system calls: getrandom for their seeds; for a report, open (not openat)
 * of the log_path file, isatty (ioctl TCGETS) for colours, stat to find
 * llvm-symbolizer. They would start it with the fork system call (not
 * clone): that fails with EPERM instead, so the report still comes,
 * unsymbolized. */
static const char *const sanitizer_allowed[] = {
	"getrandom", "open", "stat",
};
#endif
#ifdef SECCOMP_TSAN
/* ThreadSanitizer: its fstat interceptor calls glibc's __fxstat64, which
 * makes the fstat system call (not newfstatat); its locks spin with
 * sched_yield; while it reports a race it sleeps and reads the time with
 * system calls of its own. */
static const char *const tsan_allowed[] = {
	"fstat", "sched_yield", "nanosleep", "gettimeofday",
};
#endif
#ifdef SECCOMP_ASAN
/* LeakSanitizer's leak check at exit stops the world from a tracer task:
 * the parent checks it is dumpable (PR_GET_DUMPABLE, PR_SET_DUMPABLE if
 * not), clones the tracer without CLONE_THREAD (exactly these flags), lets
 * it trace (PR_SET_PTRACER), spins (sched_yield) and reaps it (wait4). The
 * tracer sets PR_SET_PDEATHSIG, checks getppid, sets up sigaltstack and
 * handlers, lists /proc/self/task (open, getdents), and attaches to every
 * thread (ptrace attach, wait4, getregset, detach; cont to pass a signal
 * on, kill if it dies). ASan also gives each new thread a sigaltstack. */
#define LSAN_TRACER_CLONE (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_UNTRACED)
static const char *const asan_allowed[] = {
	"getdents", "getppid", "sched_yield", "sigaltstack",
};
static const long asan_ptrace[] = {
	PTRACE_ATTACH, PTRACE_DETACH, PTRACE_GETREGSET, PTRACE_CONT, PTRACE_KILL,
};
static const long asan_prctl[] = {
	PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_SET_PTRACER, PR_SET_PDEATHSIG,
};
#endif

/* ---- the SIGSYS handler: async-signal-safe, so everything is ready before */

#define NAMED_CALLS 512
static char call_names[NAMED_CALLS][32];
static bool loaded;     /* a filter is in place: the next one stacks on it */
static uint32_t native_arch;

static size_t put_str(char *buf, size_t at, size_t cap, const char *s)
{
	while (*s && at + 1 < cap)
		buf[at++] = *s++;
	return at;
}

static size_t put_num(char *buf, size_t at, size_t cap, unsigned long v, unsigned base)
{
	char digits[24];
	size_t n = 0;
	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n && at + 1 < cap)
		buf[at++] = digits[--n];
	return at;
}

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char line[160];
	size_t n = put_str(line, 0, sizeof(line), "memoverlay: seccomp: system call ");
	int nr = si->si_syscall;
	if (si->si_arch == native_arch && nr >= 0 && nr < NAMED_CALLS && call_names[nr][0]) {
		n = put_str(line, n, sizeof(line), call_names[nr]);
		n = put_str(line, n, sizeof(line), " (");
		n = put_num(line, n, sizeof(line), (unsigned long)nr, 10);
		n = put_str(line, n, sizeof(line), ")");
	} else {
		n = put_num(line, n, sizeof(line), (unsigned long)(unsigned)nr, 10);
		if (si->si_arch != native_arch) {
			n = put_str(line, n, sizeof(line), " of architecture 0x");
			n = put_num(line, n, sizeof(line), si->si_arch, 16);
		}
	}
	n = put_str(line, n, sizeof(line), " is not allowed; stopping\n");
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
	/* SA_RESETHAND made SIGSYS fatal again: die of it, as the kernel's own
	 * SECCOMP_RET_KILL_PROCESS would. Where SIGSYS is blocked in here (a
	 * sanitizer's wrapper blocks everything), it arrives on return, before
	 * the interrupted code runs on. */
	raise(sig);
}

/* ---- building the filter */

static int allow_names(scmp_filter_ctx ctx, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);
		if (nr == __NR_SCMP_ERROR || nr < 0)
			continue; /* not a system call on this architecture */
		int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
		if (r < 0)
			return r;
	}
	return 0;
}

static int add_rules(scmp_filter_ctx ctx, const struct config *cfg, enum seccomp_ring ring)
{
	int r = allow_names(ctx, allowed, sizeof(allowed) / sizeof(allowed[0]));
	if (r == 0)
		r = allow_names(ctx, control_allowed,
				sizeof(control_allowed) / sizeof(control_allowed[0]));
	if (r == 0 && cfg->upperdir)
		r = allow_names(ctx, upperdir_allowed,
				sizeof(upperdir_allowed) / sizeof(upperdir_allowed[0]));
	if (r == 0 && cfg->passthrough_upper)
		r = allow_names(ctx, upper_files_allowed,
				sizeof(upper_files_allowed) / sizeof(upper_files_allowed[0]));
	if (r == 0 && ring == SECCOMP_RING_STARTING)
		r = allow_names(ctx, ring_setup, sizeof(ring_setup) / sizeof(ring_setup[0]));
	/* ... and then the second filter (a filter can only take away) */
	if (r == 0 && ring == SECCOMP_RING_STARTING)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(seccomp), 1,
				     SCMP_A0(SCMP_CMP_EQ, SECCOMP_SET_MODE_FILTER, 0));
	if (r == 0 && ring == SECCOMP_RING_RUNNING)
		r = allow_names(ctx, ring_running, sizeof(ring_running) / sizeof(ring_running[0]));
	/* threads: clone with CLONE_THREAD; a fork fails (see the top) */
	unsigned long fork_mask = CLONE_THREAD;
#ifdef SECCOMP_ASAN
	fork_mask |= CLONE_UNTRACED; /* that is the leak check's tracer (below) */
#endif
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
				     CLONE_FLAGS_ARG(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
				     CLONE_FLAGS_ARG(SCMP_CMP_MASKED_EQ, fork_mask, 0));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	/* libfuse 3.17+ names each worker thread it starts ("fuse_worker",
	 * pthread_setname_np: PR_SET_NAME on the calling thread) */
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
				     SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME, 0));
	/* root's own unmount at the end (fuse_session_unmount: lazy) */
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(umount2), 1,
				     SCMP_A1(SCMP_CMP_EQ, MNT_DETACH, 0));
	/* FUSE passthrough (passthrough.c): registering and dropping backing
	 * files on /dev/fuse */
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
				     SCMP_A1(SCMP_CMP_EQ, FUSE_DEV_IOC_BACKING_OPEN, 0));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
				     SCMP_A1(SCMP_CMP_EQ, FUSE_DEV_IOC_BACKING_CLOSE, 0));
#if defined(SECCOMP_ASAN) || defined(SECCOMP_TSAN)
	if (r == 0)
		r = allow_names(ctx, sanitizer_allowed,
				sizeof(sanitizer_allowed) / sizeof(sanitizer_allowed[0]));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
				     SCMP_A1(SCMP_CMP_EQ, TCGETS, 0));
	if (r == 0 && seccomp_syscall_resolve_name("fork") >= 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(fork), 0);
#endif
#ifdef SECCOMP_TSAN
	if (r == 0)
		r = allow_names(ctx, tsan_allowed, sizeof(tsan_allowed) / sizeof(tsan_allowed[0]));
#endif
#ifdef SECCOMP_ASAN
	if (r == 0)
		r = allow_names(ctx, asan_allowed, sizeof(asan_allowed) / sizeof(asan_allowed[0]));
	if (r == 0)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
				     CLONE_FLAGS_ARG(SCMP_CMP_EQ, LSAN_TRACER_CLONE, 0));
	for (size_t i = 0; r == 0 && i < sizeof(asan_ptrace) / sizeof(asan_ptrace[0]); i++)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ptrace), 1,
				     SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)asan_ptrace[i], 0));
	for (size_t i = 0; r == 0 && i < sizeof(asan_prctl) / sizeof(asan_prctl[0]); i++)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
				     SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)asan_prctl[i], 0));
#endif
	return r;
}

static void name_calls(void)
{
	if (native_arch)
		return; /* named for the first filter */
	native_arch = seccomp_arch_native();
	for (int nr = 0; nr < NAMED_CALLS; nr++) {
		char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
		if (name) {
			snprintf(call_names[nr], sizeof(call_names[nr]), "%s", name);
			free(name);
		}
	}
}

int seccomp_install(const struct config *cfg, enum seccomp_ring ring)
{
	if (!cfg->seccomp)
		return 0;
	name_calls();
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsys;
	sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSYS, &sa, &old) < 0) {
		int e = errno;
		fprintf(stderr, "memoverlay: seccomp: cannot handle SIGSYS: %s\n", strerror(e));
		return -e;
	}

	int r = -ENOMEM;
	const char *what = "set up";
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
	if (ctx) {
		r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_TRAP);
		if (r == 0)
			r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
		/* a second filter: no_new_privs is set, and setting it again
		 * (libseccomp's default) is a call the first one refuses */
		if (r == 0 && loaded)
			r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
		/* best effort: kernel logging (Linux 4.14), a binary search
		 * over the calls instead of a linear one */
		if (r == 0) {
			(void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1);
			(void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
		}
		if (r == 0)
			r = add_rules(ctx, cfg, ring);
		if (r == 0) {
			what = "load";
			r = seccomp_load(ctx);
		}
		seccomp_release(ctx);
	}
	if (r == 0)
		loaded = true;
	if (r < 0) {
		sigaction(SIGSYS, &old, NULL);
		fprintf(stderr, "memoverlay: seccomp: cannot %s the system call filter: %s "
			"(-o seccomp=off runs without it)\n", what, strerror(-r));
		return r;
	}
	return 0;
}

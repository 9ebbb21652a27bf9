/* hints.h - the whole contract of libhints.
 *
 * libhints reads an OCI runtime config.json and turns it into what memoverlay
 * needs to decide how to mount a volume:
 *   - the spec mounts (destination, type, source, options) and the root,
 *   - the gVisor mount hints from the annotations
 *     dev.gvisor.spec.mount.<name>.<field>,
 *   - the fstab/OCI mount option table (ro, noexec, noatime, ...),
 *   - the decisions: overlay or not, shared tmpfs or not, exclusive or shared
 *     access, whether a mount is compatible with its hint, and the Kata-style
 *     classification of mounts that are never overlaid.
 *
 * Problems never abort: parsing always yields a config whose diagnostics list
 * every error and warning, each one line that names the file, the JSON path
 * and what was wrong. The only NULL return is out-of-memory.
 */
#ifndef MEMOVERLAY_HINTS_H
#define MEMOVERLAY_HINTS_H

#include <stdbool.h>
#include <stddef.h>

/* The annotation prefix gVisor defined; everything after it is <name>.<field>. */
#define HINTS_ANNOTATION_PREFIX "dev.gvisor.spec.mount."

/* ---- mount option table (mount_options.c) ------------------------------ */

/* Our own bits rather than MS_*: callers need not include <sys/mount.h>, and
 * the daemon maps them to whatever it enforces. */
enum hints_opt_flag {
	HINTS_OPT_RDONLY      = 1u << 0,
	HINTS_OPT_NOSUID      = 1u << 1,
	HINTS_OPT_NODEV       = 1u << 2,
	HINTS_OPT_NOEXEC      = 1u << 3,
	HINTS_OPT_SYNC        = 1u << 4,
	HINTS_OPT_REMOUNT     = 1u << 5,
	HINTS_OPT_MAND        = 1u << 6,
	HINTS_OPT_DIRSYNC     = 1u << 7,
	HINTS_OPT_NOATIME     = 1u << 8,
	HINTS_OPT_NODIRATIME  = 1u << 9,
	HINTS_OPT_BIND        = 1u << 10,
	HINTS_OPT_REC         = 1u << 11,
	HINTS_OPT_RELATIME    = 1u << 12,
	HINTS_OPT_STRICTATIME = 1u << 13,
};

/* Parsed option words. Words the table does not know are filesystem data
 * (e.g. "size=1g"), kept in order; propagation words are dropped. */
struct hints_options {
	unsigned flags;         /* HINTS_OPT_* after "the later word wins" */
	char **data;            /* unknown words, owned */
	size_t n_data;
};

/* Parse an array of option words into *out (zeroed first). 0, or -1 on OOM. */
int hints_options_parse(const char *const *words, size_t n, struct hints_options *out);
/* Same for a comma-separated list; empty words are skipped. 0, or -1 on OOM. */
int hints_options_parse_csv(const char *csv, struct hints_options *out);
void hints_options_free(struct hints_options *opts);
/* True for shared/rshared/slave/rslave/private/rprivate/unbindable/runbindable. */
bool hints_option_is_propagation(const char *word);
/* True when the word is in the flag table (incl. "defaults"), i.e. not fs data. */
bool hints_option_is_flag(const char *word);

/* One word of the flag table: the flag it sets, or clears ("rw" clears
 * HINTS_OPT_RDONLY). "defaults" is in the table with no flag. */
struct hints_opt_word {
	const char *word;
	bool clear;
	unsigned flag;
};
/* The table's entry for word, or NULL for a word it does not know. */
const struct hints_opt_word *hints_option_lookup(const char *word);
/* flags after the word w (the later word wins). */
unsigned hints_option_apply(unsigned flags, const struct hints_opt_word *w);
/* The word that sets flag (with clear: clears it), e.g. "nosuid" and
 * "suid" for HINTS_OPT_NOSUID; NULL when the table has none. */
const char *hints_option_word(unsigned flag, bool clear);

/* ---- config.json (oci_config.c) and hints (mount_hints.c) -------------- */

enum hints_severity { HINTS_WARNING, HINTS_ERROR };

struct hints_diag {
	enum hints_severity severity;
	char *msg;              /* one line, no trailing newline */
};

enum hints_type { HINTS_TYPE_NONE = 0, HINTS_TYPE_TMPFS, HINTS_TYPE_BIND };
enum hints_share { HINTS_SHARE_NONE = 0, HINTS_SHARE_CONTAINER, HINTS_SHARE_POD,
		   HINTS_SHARE_SHARED };
/* Shared is the zero value because it is the default when no lifecycle is given. */
enum hints_lifecycle { HINTS_LIFECYCLE_SHARED = 0, HINTS_LIFECYCLE_POD,
		       HINTS_LIFECYCLE_CONTAINER };

/* One entry of the spec's "mounts" array. */
struct hints_mount {
	char *destination;      /* required by OCI */
	char *type;             /* NULL when absent */
	char *source;           /* NULL when absent */
	char **options;         /* the words as written */
	size_t n_options;
	struct hints_options opts;
};

/* One validated mount hint (the "master" of a shared volume). */
struct hints_hint {
	char *name;
	char *source;
	enum hints_type type;
	enum hints_share share;
	enum hints_lifecycle lifecycle;
	struct hints_options opts;  /* from the "options" field, propagation dropped */
};

struct hints_config {
	char *path;             /* the name used in messages */
	bool has_root;
	char *root_path;        /* NULL unless has_root */
	bool root_readonly;
	struct hints_mount *mounts;
	size_t n_mounts;
	struct hints_hint *hints;   /* only hints that survived validation */
	size_t n_hints;
	struct hints_diag *diags;   /* errors and warnings, in the order found */
	size_t n_diags;
	size_t n_errors;
};

/* Read and parse a config.json. Open/read failures become an error diag. */
struct hints_config *hints_config_load(const char *path);
/* Parse a buffer (need not be NUL-terminated); name is used in messages. */
struct hints_config *hints_config_parse(const char *text, size_t len, const char *name);
void hints_config_free(struct hints_config *cfg);

/* The hint whose source equals the mount source, or NULL. */
const struct hints_hint *hints_find_hint(const struct hints_config *cfg, const char *source);
/* The spec mount with this destination (the last one wins, as in mount order). */
const struct hints_mount *hints_find_mount(const struct hints_config *cfg, const char *destination);

/* ---- decisions (decide.c) ----------------------------------------------- */

enum hints_access { HINTS_ACCESS_EXCLUSIVE, HINTS_ACCESS_SHARED };

/* bind + share=container + lifecycle != shared: give it a memoverlay upper. */
bool hints_should_overlay(const struct hints_hint *hint);
/* tmpfs + share=pod: one tmpfs shared by the pod's containers. */
bool hints_should_share(const struct hints_hint *hint);
/* Exclusive for share=container or a pod-shared tmpfs, else shared. */
enum hints_access hints_access_type(const struct hints_hint *hint);

/* Compatibility rules: the master's restriction must hold in the replica. */
enum hints_compat_rule {
	HINTS_COMPAT_RO      = 1u << 0,
	HINTS_COMPAT_NOEXEC  = 1u << 1,
	HINTS_COMPAT_NOATIME = 1u << 2,
	HINTS_COMPAT_NOSUID  = 1u << 3,
};
/* Bitmask of violated HINTS_COMPAT_* rules; 0 means compatible. */
unsigned hints_check_compatible(const struct hints_options *master,
				const struct hints_options *replica);
/* One-line message naming the mount, the hint and the rule; caller frees.
 * NULL on OOM. */
char *hints_compat_message(const char *mount, const struct hints_hint *hint,
			   enum hints_compat_rule rule);
/* Flags a compatible replica runs with: its own, plus the master's
 * restrictive ones (ro, noexec, nosuid, nodev, noatime). */
unsigned hints_effective_flags(const struct hints_hint *hint, const struct hints_mount *mount);

/* Kata's mount classes: which mounts are never overlaid and why. */
enum hints_mount_class {
	HINTS_CLASS_REGULAR,    /* may be overlaid if its hint says so */
	HINTS_CLASS_SYSTEM,     /* /proc, /sys and below: never overlaid */
	HINTS_CLASS_HOST_DEVICE,/* /dev and below, not a regular file: never */
	HINTS_CLASS_EPHEMERAL,  /* k8s empty-dir on tmpfs: already throw-away */
	HINTS_CLASS_WATCHABLE,  /* k8s configmap/secret: changes underneath */
};
/* What only the host can tell; the library itself never touches the disk. */
struct hints_host_facts {
	bool source_on_tmpfs;
	bool source_is_regular;
};
enum hints_mount_class hints_classify_mount(const struct hints_mount *mount,
					    const struct hints_host_facts *facts);

enum hints_decision {
	HINTS_DECIDE_NONE,      /* no hint, or a class that is never overlaid */
	HINTS_DECIDE_OVERLAY,   /* overlay with memoverlay */
	HINTS_DECIDE_SHARED_TMPFS,
	HINTS_DECIDE_BIND,      /* plain bind of the hinted volume */
};
/* hint may be NULL. Read-only mounts are not overlaid: nothing would write. */
enum hints_decision hints_decide(const struct hints_hint *hint, const struct hints_mount *mount,
				 enum hints_mount_class cls);
/* Access for a mount: watchable volumes are always shared (revalidated);
 * otherwise the hint's access type, and shared when there is no hint. */
enum hints_access hints_mount_access(const struct hints_hint *hint, enum hints_mount_class cls);

/* Lexically clean an absolute path like Go's filepath.Clean; caller frees. */
char *hints_path_clean(const char *path);

/* Names for printing; never NULL. */
const char *hints_type_name(enum hints_type t);
const char *hints_share_name(enum hints_share s);
const char *hints_lifecycle_name(enum hints_lifecycle l);
const char *hints_access_name(enum hints_access a);
const char *hints_class_name(enum hints_mount_class c);
const char *hints_decision_name(enum hints_decision d);
const char *hints_compat_rule_word(enum hints_compat_rule rule);  /* "ro", ... */

#endif

/* decide.c - what to do with a mount, given its hint and where it comes from.
 *
 * Three questions, answered without touching the disk (the caller passes in
 * whatever host facts it knows):
 *   - does the hint ask for an overlay, a pod-shared tmpfs, or neither;
 *   - may the daemon cache (exclusive access) or must it revalidate (shared);
 *   - is a container's mount (replica) compatible with the pod's hint
 *     (master): it may be more restrictive than the master, never less.
 * Plus Kata's classification of mounts that must never get an overlay.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

bool hints_should_overlay(const struct hints_hint *hint)
{
	return hint->type == HINTS_TYPE_BIND && hint->share == HINTS_SHARE_CONTAINER &&
	       hint->lifecycle != HINTS_LIFECYCLE_SHARED;
}

bool hints_should_share(const struct hints_hint *hint)
{
	return hint->type == HINTS_TYPE_TMPFS && hint->share == HINTS_SHARE_POD;
}

/* Exclusive means nobody else writes the volume behind our back: a volume
 * only this container uses, or a pod tmpfs that lives inside the sandbox. */
enum hints_access hints_access_type(const struct hints_hint *hint)
{
	if (hint->share == HINTS_SHARE_SHARED)
		return HINTS_ACCESS_SHARED;
	if (hints_should_share(hint) || hint->share == HINTS_SHARE_CONTAINER)
		return HINTS_ACCESS_EXCLUSIVE;
	return HINTS_ACCESS_SHARED;
}

static const struct {
	enum hints_compat_rule rule;
	unsigned flag;
	const char *word;
} compat_rules[] = {
	{ HINTS_COMPAT_RO,      HINTS_OPT_RDONLY,  "ro" },
	{ HINTS_COMPAT_NOEXEC,  HINTS_OPT_NOEXEC,  "noexec" },
	{ HINTS_COMPAT_NOATIME, HINTS_OPT_NOATIME, "noatime" },
	{ HINTS_COMPAT_NOSUID,  HINTS_OPT_NOSUID,  "nosuid" },
};
#define N_COMPAT_RULES (sizeof(compat_rules) / sizeof(compat_rules[0]))

unsigned hints_check_compatible(const struct hints_options *master,
				const struct hints_options *replica)
{
	unsigned violated = 0;
	for (size_t i = 0; i < N_COMPAT_RULES; i++)
		if ((master->flags & compat_rules[i].flag) && !(replica->flags & compat_rules[i].flag))
			violated |= compat_rules[i].rule;
	return violated;
}

const char *hints_compat_rule_word(enum hints_compat_rule rule)
{
	for (size_t i = 0; i < N_COMPAT_RULES; i++)
		if (compat_rules[i].rule == rule)
			return compat_rules[i].word;
	return "?";
}

char *hints_compat_message(const char *mount, const struct hints_hint *hint,
			   enum hints_compat_rule rule)
{
	const char *w = hints_compat_rule_word(rule);
	struct strbuf sb = STRBUF_INIT;
	sb_adds(&sb, "mount ");
	sb_addq(&sb, mount);
	sb_adds(&sb, " is incompatible with its mount hint ");
	sb_addq(&sb, hint->name);
	sb_addf(&sb, ": the hint (master) is %s, so the mount must be %s too", w, w);
	return sb_take(&sb);
}

/* The restrictions a replica inherits from its master. nodev is not a
 * compatibility rule in gVisor, but inheriting it only ever takes away. */
#define INHERITED_FLAGS (HINTS_OPT_RDONLY | HINTS_OPT_NOEXEC | HINTS_OPT_NOSUID | \
			 HINTS_OPT_NODEV | HINTS_OPT_NOATIME)

unsigned hints_effective_flags(const struct hints_hint *hint, const struct hints_mount *mount)
{
	unsigned flags = mount ? mount->opts.flags : 0;
	if (hint)
		flags |= hint->opts.flags & INHERITED_FLAGS;
	return flags;
}

char *hints_path_clean(const char *path)
{
	size_t len = strlen(path);
	char *out = malloc(len + 2);
	if (!out)
		return NULL;
	size_t o = 0;
	const char *p = path;
	while (*p) {
		size_t n = strcspn(p, "/");
		if (n == 1 && p[0] == '.') {
			/* "." names the directory itself */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			/* ".." above the root stays at the root, as in the kernel */
			while (o > 0 && out[o - 1] != '/')
				o--;
			if (o > 0)
				o--;
		} else if (n > 0) {
			out[o++] = '/';
			memcpy(out + o, p, n);
			o += n;
		}
		p += n;
		if (*p == '/')
			p++;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = '\0';
	return out;
}

static bool path_is_under(const char *clean, const char *top)
{
	size_t n = strlen(top);
	return strncmp(clean, top, n) == 0 && (clean[n] == '\0' || clean[n] == '/');
}

/* The directory a kubelet volume lives in: .../<plugin>/<volume name>. */
static bool in_k8s_volume_dir(const char *clean, const char *plugin)
{
	const char *last = strrchr(clean, '/');
	if (!last || last == clean)
		return false;
	const char *prev = last;
	while (prev > clean && prev[-1] != '/')
		prev--;
	size_t n = (size_t)(last - prev);
	return n == strlen(plugin) && memcmp(prev, plugin, n) == 0;
}

enum hints_mount_class hints_classify_mount(const struct hints_mount *mount,
					    const struct hints_host_facts *facts)
{
	static const struct hints_host_facts none = { false, false };
	if (!facts)
		facts = &none;
	enum hints_mount_class cls = HINTS_CLASS_REGULAR;
	char *dest = hints_path_clean(mount->destination);
	char *src = mount->source ? hints_path_clean(mount->source) : NULL;
	/* Out of memory: classify the raw strings, which is only less tolerant
	 * of "//" and "..", rather than fail a function that cannot. */
	const char *d = dest ? dest : mount->destination;
	const char *s = src ? src : mount->source;
	bool is_tmpfs = (mount->type && strcmp(mount->type, "tmpfs") == 0) || facts->source_on_tmpfs;

	if (path_is_under(d, "/proc") || path_is_under(d, "/sys"))
		cls = HINTS_CLASS_SYSTEM;
	/* A regular file under /dev (e.g. /dev/termination-log) is a plain
	 * file bind, not a device; Kata makes the same exception. */
	else if ((path_is_under(d, "/dev") || (s && s[0] == '/' && path_is_under(s, "/dev"))) &&
		 !facts->source_is_regular)
		cls = HINTS_CLASS_HOST_DEVICE;
	else if (s && in_k8s_volume_dir(s, "kubernetes.io~empty-dir") && is_tmpfs)
		cls = HINTS_CLASS_EPHEMERAL;
	else if (s && (in_k8s_volume_dir(s, "kubernetes.io~configmap") ||
		       in_k8s_volume_dir(s, "kubernetes.io~secret")))
		cls = HINTS_CLASS_WATCHABLE;
	free(dest);
	free(src);
	return cls;
}

enum hints_decision hints_decide(const struct hints_hint *hint, const struct hints_mount *mount,
				 enum hints_mount_class cls)
{
	if (!hint || cls == HINTS_CLASS_SYSTEM || cls == HINTS_CLASS_HOST_DEVICE)
		return HINTS_DECIDE_NONE;
	if (hints_should_share(hint))
		return HINTS_DECIDE_SHARED_TMPFS;
	/* An empty-dir on tmpfs is thrown away with the pod already, and a
	 * read-only mount has no writes for an upper layer to take. */
	if (hints_should_overlay(hint) && cls != HINTS_CLASS_EPHEMERAL &&
	    !(hints_effective_flags(hint, mount) & HINTS_OPT_RDONLY))
		return HINTS_DECIDE_OVERLAY;
	return HINTS_DECIDE_BIND;
}

enum hints_access hints_mount_access(const struct hints_hint *hint, enum hints_mount_class cls)
{
	if (cls == HINTS_CLASS_WATCHABLE || !hint)
		return HINTS_ACCESS_SHARED;
	return hints_access_type(hint);
}

const char *hints_type_name(enum hints_type t)
{
	switch (t) {
	case HINTS_TYPE_TMPFS: return "tmpfs";
	case HINTS_TYPE_BIND:  return "bind";
	case HINTS_TYPE_NONE:  break;
	}
	return "none";
}

const char *hints_share_name(enum hints_share s)
{
	switch (s) {
	case HINTS_SHARE_CONTAINER: return "container";
	case HINTS_SHARE_POD:       return "pod";
	case HINTS_SHARE_SHARED:    return "shared";
	case HINTS_SHARE_NONE:      break;
	}
	return "none";
}

const char *hints_lifecycle_name(enum hints_lifecycle l)
{
	switch (l) {
	case HINTS_LIFECYCLE_POD:       return "pod";
	case HINTS_LIFECYCLE_CONTAINER: return "container";
	case HINTS_LIFECYCLE_SHARED:    break;
	}
	return "shared";
}

const char *hints_access_name(enum hints_access a)
{
	return a == HINTS_ACCESS_EXCLUSIVE ? "exclusive" : "shared";
}

const char *hints_class_name(enum hints_mount_class c)
{
	switch (c) {
	case HINTS_CLASS_SYSTEM:      return "system";
	case HINTS_CLASS_HOST_DEVICE: return "host-device";
	case HINTS_CLASS_EPHEMERAL:   return "ephemeral";
	case HINTS_CLASS_WATCHABLE:   return "watchable";
	case HINTS_CLASS_REGULAR:     break;
	}
	return "regular";
}

const char *hints_decision_name(enum hints_decision d)
{
	switch (d) {
	case HINTS_DECIDE_OVERLAY:      return "overlay with memoverlay";
	case HINTS_DECIDE_SHARED_TMPFS: return "shared tmpfs";
	case HINTS_DECIDE_BIND:         return "plain bind";
	case HINTS_DECIDE_NONE:         break;
	}
	return "not overlaid";
}

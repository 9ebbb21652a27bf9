/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for fs/cow.c (TAP): hand-picked cases, then random marks and
 * truncates checked byte by byte against a plain array model. */
#include "cow.h"

#include "tap.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAXLEN 300

/* model: lower_end and, for each byte below it, whether it is up */
struct model {
	uint64_t lower_end;
	bool up[MAXLEN];
};

static const char *check(const struct cow_map *m, const struct model *md)
{
	static char why[200];
	for (size_t k = 0; k < m->n; k++) {
		if (m->up[k].a >= m->up[k].b)
			return "empty range";
		if (m->up[k].b > m->lower_end)
			return "range past lower_end";
		if (k && m->up[k - 1].b >= m->up[k].a)
			return "ranges overlap or touch";
	}
	if (m->lower_end != md->lower_end) {
		/* the map may drop to 0 when everything is up */
		for (uint64_t p = 0; p < md->lower_end; p++)
			if (!md->up[p])
				return "lower_end differs";
		if (m->lower_end != 0)
			return "lower_end differs";
	}
	uint64_t lower = 0;
	for (uint64_t p = 0; p < MAXLEN; p++) {
		bool want = p < md->lower_end && !md->up[p], got;
		lower += want;
		uint64_t end = cow_span(m, p, &got);
		if (got != want || end <= p) {
			snprintf(why, sizeof(why), "span at %llu: lower %d want %d end %llu",
				 (unsigned long long)p, got, want, (unsigned long long)end);
			return why;
		}
		/* the run really ends at `end` */
		uint64_t q = p + 1;
		while (q < MAXLEN && q < end) {
			bool w = q < md->lower_end && !md->up[q];
			if (w != want) {
				snprintf(why, sizeof(why), "span at %llu runs past %llu",
					 (unsigned long long)p, (unsigned long long)q);
				return why;
			}
			q++;
		}
		if (end < MAXLEN && end != m->lower_end &&
		    (end < md->lower_end && !md->up[end]) == want)
			return "span ends too early";
	}
	if (cow_lower_bytes(m) != lower)
		return "cow_lower_bytes";
	return NULL;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(uint64_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng % n;
}

int main(void)
{
	struct cow_map m;
	cow_init(&m);
	m.lower_end = 100;
	bool lower;
	ok(cow_span(&m, 0, &lower) == 100 && lower, "fresh map: all lower");
	ok(cow_span(&m, 100, &lower) == UINT64_MAX && !lower, "past lower_end: upper");
	cow_reserve(&m);
	cow_mark(&m, 10, 20);
	ok(cow_span(&m, 0, &lower) == 10 && lower, "before a write: lower up to it");
	ok(cow_span(&m, 15, &lower) == 20 && !lower, "inside a write: upper to its end");
	cow_reserve(&m);
	cow_mark(&m, 20, 30);
	ok(m.n == 1 && m.up[0].a == 10 && m.up[0].b == 30, "touching writes merge");
	cow_reserve(&m);
	cow_mark(&m, 50, 500);
	ok(m.n == 2 && m.up[1].b == 100, "a write past lower_end is clipped");
	cow_truncate(&m, 25);
	ok(m.lower_end == 25 && m.n == 1 && m.up[0].b == 25, "truncate clips");
	cow_reserve(&m);
	cow_mark(&m, 0, 10);
	ok(m.lower_end == 0 && m.n == 0 && m.up == NULL, "all up: the map is empty");
	cow_reset(&m);

	m.lower_end = 1 << 20;
	bool early = false;
	for (uint64_t k = 0; k <= COW_MAX_RANGES; k++) {
		early |= cow_fragmented(&m);
		cow_reserve(&m);
		cow_mark(&m, 2 * k, 2 * k + 1);
	}
	ok(!early, "not fragmented up to COW_MAX_RANGES ranges");
	ok(m.n == COW_MAX_RANGES + 1 && cow_fragmented(&m), "fragmented past COW_MAX_RANGES");
	cow_backoff(&m);
	ok(!cow_fragmented(&m), "backoff: not fragmented again at once");
	cow_reset(&m);
	ok(m.max_ranges == 0, "reset forgets the backoff");

	int bad = 0;
	for (int round = 0; round < 2000 && !bad; round++) {
		struct model md = { .lower_end = rnd(MAXLEN) };
		memset(md.up, 0, sizeof(md.up));
		cow_init(&m);
		m.lower_end = md.lower_end;
		for (int step = 0; step < 40; step++) {
			uint64_t a = rnd(MAXLEN), len = rnd(4) ? rnd(20) : rnd(MAXLEN);
			if (rnd(8) == 0) {
				cow_truncate(&m, a);
				if (a < md.lower_end) {
					md.lower_end = a;
					for (uint64_t p = a; p < MAXLEN; p++)
						md.up[p] = false;
				}
			} else {
				if (cow_reserve(&m)) {
					bad = !ok(false, "cow_reserve failed");
					break;
				}
				cow_mark(&m, a, a + len);
				for (uint64_t p = a; p < a + len && p < md.lower_end; p++)
					md.up[p] = true;
			}
			const char *why = check(&m, &md);
			if (why) {
				bad = !ok(false, "round %d step %d: %s", round, step, why);
				break;
			}
		}
		cow_reset(&m);
	}
	ok(!bad, "2000 random rounds of marks and truncates match the model");
	return tap_done();
}

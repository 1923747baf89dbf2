/*
 * Sticky assignment: the version for a key, from the key and the config
 * alone, so it is the same in every worker, on every instance and after
 * restarts (every hash here is seedless). Two schemes, by the number of
 * non-default versions the endpoint lists, whatever their shares:
 *
 * At most two non-default versions: exact ramps (SPEC §3.3, §8). The key
 * alone is hashed once to a point p in [0, 10000) basis points. The first
 * non-default version in config order owns [0, share), the second owns
 * [10000 - share, 10000), the default owns the middle. Shares are the
 * effective shares in hundredths of a percent, so the layout is exact to
 * the unit the config can express. Raising a version's share widens its
 * interval into the middle, so every key that moves goes from the default
 * to it; lowering it hands exactly those keys back, and returning to an
 * earlier share restores the earlier assignment key for key. That is the
 * property a rollout needs at every step, including 0 % -> first step.
 *
 * Which version is "first" is config order, not name order. The admin API
 * appends new versions and the persisted document keeps the order, so in
 * the usual life cycle (add a candidate, ramp it, promote it, delete an old
 * one) a live version keeps its end: a version added after it gets the
 * other end, which was the default's, and moves nothing. Name order would
 * move every key of a live version whenever a newly added version's name
 * sorts before it, the most common edit of all. The cost: reordering the
 * versions by hand, or deleting the first non-default version while the
 * second is live, moves the second one's keys to the other end. Neither is
 * a share change, which is all §3.3 promises to keep exact. Shares, mirror
 * settings and 0 % do not change the layout: a 0 % or mirror version still
 * holds its end (with an empty interval), so its first step is exact too.
 *
 * Three or more non-default versions: weighted rendezvous hashing (highest
 * random weight). Every version v draws u = H(v.name, k) in (0, 1) and the
 * key goes to the highest  w_v / -ln(u),  w_v its effective share; -ln(u)/w_v
 * is exponential of rate w_v and the smallest of independent exponentials
 * is v with probability w_v / sum(w), so each version gets its share. A
 * version that grows keeps all its keys and takes some from every other;
 * but the default takes the remainder, so it shrinks at the same time and
 * a key it loses may land on a third version. With three or more versions
 * whose shares move no stateless layout can be exact for every change (two
 * ends of a line are all an interval layout has), so this scheme keeps the
 * assignment consistent (the same split gives the same assignment, and
 * returning to a split restores it) and lets keys move a little more.
 * Going from two to three non-default versions switches schemes and
 * reassigns keys: delete retired versions rather than keep them at 0 %.
 *
 * In both schemes a version with no share (0 %, or a mirror, which serves
 * no live traffic) never gets a key.
 */
#include "routing/routing.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint64_t
mix(uint64_t z)
{
    /* splitmix64's finaliser: spreads FNV's output over all 64 bits. */
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z;
}

uint64_t
route_hash(const char *name, const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;            /* FNV-1a */
    for (const char *c = name; *c; c++) {
        h ^= (unsigned char)*c;
        h *= 1099511628211ULL;
    }
    h ^= 0xff;                                      /* separator */
    h *= 1099511628211ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return mix(h);
}

int
route_key_point(const char *key, size_t len)
{
    /* The empty name is not a valid version name, so this draw is
     * independent of every rendezvous draw. The modulo's bias is
     * (2^64 mod 10000) / 2^64, below 1e-15. */
    return (int)(route_hash("", key, len) % CFG_PCT_TOTAL);
}

static int
share(const struct cfg_version *v)
{
    return v->mirror > 0 || v->effective < 0 ? 0 : v->effective;
}

static int
rendezvous(const struct cfg_endpoint *ep, const char *key, size_t len)
{
    int best = -1;
    double best_score = 0;

    for (int i = 0; i < ep->n_versions; i++) {
        int w = share(&ep->versions[i]);
        if (w <= 0)
            continue;
        uint64_t h = route_hash(ep->versions[i].name, key, len);
        double u = ((double)(h >> 11) + 0.5) / 9007199254740992.0;    /* (0, 1) */
        double score = (double)w / -log(u);
        if (best < 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best < 0 ? ep->default_version : best;
}

int
route_sticky(const struct cfg_endpoint *ep, const char *key, size_t len)
{
    int ends[2] = {-1, -1}, n = 0;

    for (int i = 0; i < ep->n_versions; i++) {
        if (i == ep->default_version)
            continue;
        if (n == 2)
            return rendezvous(ep, key, len);
        ends[n++] = i;
    }
    int p = route_key_point(key, len);
    if (ends[0] >= 0 && p < share(&ep->versions[ends[0]]))
        return ends[0];
    if (ends[1] >= 0 && p >= CFG_PCT_TOTAL - share(&ep->versions[ends[1]]))
        return ends[1];
    return ep->default_version;
}

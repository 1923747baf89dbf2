/*
 * Sticky assignment by weighted rendezvous hashing (highest random weight).
 *
 * For a key k every version v draws a fixed pseudo-random number
 * u = H(v.name, k) in (0, 1), from a hash with no per-process seed, so the
 * draw is the same in every worker, every instance and after restarts.
 * The key goes to the version with the highest  w_v / -ln(u)  where w_v is
 * the version's effective share; -ln(u) / w_v is an exponential variable
 * of rate w_v, and the smallest of independent exponentials is version v
 * with probability w_v / sum(w): each version gets its share of keys.
 *
 * Moving one version's weight changes only that version's score, so keys
 * move only to it (when it grows) or only away from it (when it shrinks),
 * and lowering it back returns exactly the keys it took. With two versions
 * that is SPEC §3.3 exactly. With three or more, raising one version also
 * lowers the default (it takes the remainder), and a key the default loses
 * may land on a third version; no stateless assignment can avoid that for
 * every change once there are three or more non-default versions, so this
 * keeps the exact property where it is possible and stays consistent
 * otherwise. Versions of weight 0 never win.
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
route_sticky(const struct cfg_endpoint *ep, const char *key, size_t len)
{
    int best = -1;
    double best_score = 0;

    for (int i = 0; i < ep->n_versions; i++) {
        int w = ep->versions[i].effective;
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

#include "routing/routing.h"

#include <string.h>

void
route_split_init(struct route_split *s, const struct cfg_endpoint *ep)
{
    memset(s, 0, sizeof(*s));
    s->n = ep->n_versions;
    for (int i = 0; i < s->n; i++)
        s->weight[i] = ep->versions[i].effective;
}

int
route_split_next(struct route_split *s)
{
    int best = -1, total = 0;

    /*
     * Each pick adds every weight to its running score and takes the
     * highest; the winner pays back the total. Scores always sum to zero,
     * so a version of weight 0 (score 0) never beats a positive one.
     */
    for (int i = 0; i < s->n; i++) {
        if (s->weight[i] == 0)
            continue;
        s->current[i] += s->weight[i];
        total += s->weight[i];
        if (best < 0 || s->current[i] > s->current[best])
            best = i;
    }
    if (best >= 0)
        s->current[best] -= total;
    return best < 0 ? 0 : best;
}

int
route_pinned(const struct cfg_endpoint *ep, const char *name, size_t len)
{
    int vi = config_version_index(ep, name, len);
    if (vi >= 0 && ep->versions[vi].rollout.refuses_pins)
        return ROUTE_PIN_REFUSED;
    return vi < 0 ? ROUTE_PIN_UNKNOWN : vi;
}

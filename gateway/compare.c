/*
 * Shadow comparison (SPEC §7): does the mirror answer like the live version?
 *
 * The pure functions of two answers (JSON compared with tolerances and
 * ignored member paths, the one-pass walk, excerpts) are the library in
 * compare/ (compare/compare.h). This file holds what runs on a worker's
 * loop: the comparison of one shadow copy (struct shadow_cmp), a small
 * object shared by the live request (request.c, exchange.c) and its copy (shadow.c), each
 *   holding one side. Each side reports its status, its body bytes, and its
 *   end exactly once; the side that ends second runs the comparison and
 *   counts it (account_compare), or, if that is the live side and the
 *   bodies must be walked, a loop callback does right after (defer). The
 *   live response is never delayed: the live side only copies bytes
 *   already on their way to the client (json mode, up to max_bytes) or
 *   hashes them (exact mode).
 *
 * Memory: bodies retained for json mode count against the worker's
 * limits.compare_budget_bytes; a comparison that would go past it becomes
 * "unknown" and lets go of what it held, so a slow mirror with large bodies
 * costs comparisons, never memory growth. Exact mode retains nothing but a
 * SHA-256 state and, for samples, the first CMP_EXCERPT bytes of each side.
 */
#include "gateway/internal.h"
#include "compare/compare.h"

#include <event2/event.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- one copy's comparison ------------------------------------------------------ */

struct cmp_side {
    int status;                     /* 0: no response head */
    bool ended;
    bool ok;                        /* a complete response */
    uint64_t bytes;
    char *body;                     /* json mode: the body, up to max_bytes */
    size_t len, cap;                /* bytes in body, and its size */
    EVP_MD_CTX *sha;                /* exact mode */
    char head[CMP_EXCERPT + 1];     /* the first bytes, for samples */
    size_t head_len;
};

struct shadow_cmp {
    int refs;                       /* one per side still to end */
    struct worker *w;
    struct config *cfg;
    const struct cfg_endpoint *ep;
    int version;
    const struct cfg_compare *cc;
    bool unknown;                   /* decided already: over max_bytes or the budget */
    uint64_t retained;              /* bytes of both bodies, charged to the worker */
    char request_id[64];
    char trace_id[33];              /* hex; "" until cmp_set_trace() */
    struct cmp_side side[2];
    struct shadow_cmp *next;        /* waiting to run (defer) */
};

static void
side_release(struct shadow_cmp *c, struct cmp_side *s)
{
    free(s->body);
    s->body = NULL;
    s->len = s->cap = 0;
    if (s->sha != NULL) {
        EVP_MD_CTX_free(s->sha);
        s->sha = NULL;
    }
}

/* Give up on comparing bodies: the result is unknown; free what is held. */
static void
make_unknown(struct shadow_cmp *c)
{
    c->unknown = true;
    side_release(c, &c->side[0]);
    side_release(c, &c->side[1]);
    c->w->cmp_retained -= c->retained;
    c->retained = 0;
}

struct shadow_cmp *
cmp_new(struct worker *w, struct config *cfg, const struct cfg_endpoint *ep, int vi,
        const char *request_id)
{
    const struct cfg_compare *cc = &ep->versions[vi].compare;
    if (cc->mode == CFG_COMPARE_OFF)
        return NULL;
    struct shadow_cmp *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        account_compare(w, cfg, ep, vi, CMP_UNKNOWN, NULL);
        return NULL;
    }
    c->refs = 2;
    c->w = w;
    c->cfg = config_take(cfg);
    c->ep = ep;
    c->version = vi;
    c->cc = cc;
    size_t idn = request_id ? strnlen(request_id, sizeof(c->request_id) - 1) : 0;
    if (idn > 0)
        memcpy(c->request_id, request_id, idn);
    c->request_id[idn] = '\0';
    /* json mode allocates a side's body when its first bytes come. */
    for (int i = 0; i < 2 && cc->mode == CFG_COMPARE_EXACT; i++) {
        c->side[i].sha = EVP_MD_CTX_new();
        if (c->side[i].sha == NULL ||
            EVP_DigestInit_ex(c->side[i].sha, EVP_sha256(), NULL) != 1)
            c->unknown = true;
    }
    if (c->unknown)
        make_unknown(c);
    return c;
}

void
cmp_set_trace(struct shadow_cmp *c, const uint8_t trace_id[16])
{
    if (c != NULL && trace_id != NULL)
        tracing_hex(trace_id, 16, c->trace_id);
}

void
cmp_head(struct shadow_cmp *c, enum cmp_who who, int status)
{
    struct cmp_side *s = &c->side[who];
    s->status = status;
    /* A retried or repeated head starts the body again. */
    s->bytes = 0;
    s->head_len = 0;
    if (c->unknown)
        return;
    c->retained -= s->len;
    c->w->cmp_retained -= s->len;
    s->len = 0;
    if (s->sha != NULL && EVP_DigestInit_ex(s->sha, EVP_sha256(), NULL) != 1)
        make_unknown(c);
}

void
cmp_body(struct shadow_cmp *c, enum cmp_who who, const char *at, size_t len)
{
    struct cmp_side *s = &c->side[who];
    if (s->ended || len == 0)
        return;
    s->bytes += len;
    if (s->head_len < CMP_EXCERPT && c->cc->samples > 0) {
        size_t n = CMP_EXCERPT - s->head_len < len ? CMP_EXCERPT - s->head_len : len;
        memcpy(s->head + s->head_len, at, n);
        s->head_len += n;
    }
    if (c->unknown)
        return;
    if (s->sha != NULL) {
        if (EVP_DigestUpdate(s->sha, at, len) != 1)
            make_unknown(c);
        return;
    }
    if (s->bytes > c->cc->max_bytes ||
        c->w->cmp_retained + len > c->cfg->limits.compare_budget_bytes) {
        make_unknown(c);
        return;
    }
    if (s->len + len > s->cap) {
        /* Doubling, but never past max_bytes (s->bytes is within it). One
         * allocation when the body comes in one read, as it mostly does. */
        size_t need = s->len + len, cap = s->cap * 2 > need ? s->cap * 2 : need;
        if (cap > c->cc->max_bytes)
            cap = need > c->cc->max_bytes ? need : (size_t)c->cc->max_bytes;
        char *p = realloc(s->body, cap);
        if (p == NULL) {
            make_unknown(c);
            return;
        }
        s->body = p;
        s->cap = cap;
    }
    memcpy(s->body + s->len, at, len);
    s->len += len;
    c->retained += len;
    c->w->cmp_retained += len;
}

static const char *
body_of(const struct cmp_side *s)
{
    return s->body != NULL ? s->body : "";
}

static json_t *
parse_body(const struct cmp_side *s)
{
    return json_loadb(body_of(s), s->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

/* Both sides ended: decide, count, and sample a disagreement. */
static void
cmp_run(struct shadow_cmp *c)
{
    struct cmp_side *live = &c->side[CMP_LIVE], *sh = &c->side[CMP_SHADOW];
    struct cmp_diff d = {
        .request_id = c->request_id, .trace_id = c->trace_id[0] ? c->trace_id : NULL,
        .live_status = live->status,
        .shadow_status = sh->status,
    };
    char path[256] = "", lx[CMP_EXCERPT + 1] = "", sx[CMP_EXCERPT + 1] = "";
    enum cmp_result res;
    enum jsoncmp_verdict v;

    if (!live->ok || !sh->ok || live->status == 0 || sh->status == 0)
        res = CMP_UNKNOWN;
    else if (live->status != sh->status)
        res = CMP_STATUS_MISMATCH;
    else if (c->unknown)
        res = CMP_UNKNOWN;
    else if (c->cc->mode == CFG_COMPARE_EXACT) {
        unsigned char h1[EVP_MAX_MD_SIZE], h2[EVP_MAX_MD_SIZE];
        unsigned int n1 = 0, n2 = 0;
        if (EVP_DigestFinal_ex(live->sha, h1, &n1) != 1 ||
            EVP_DigestFinal_ex(sh->sha, h2, &n2) != 1)
            res = CMP_UNKNOWN;
        else
            res = live->bytes == sh->bytes && n1 == n2 && memcmp(h1, h2, n1) == 0 ?
                  CMP_EQUAL : CMP_DIFFERENT;
    } else if (live->len == sh->len && memcmp(body_of(live), body_of(sh), live->len) == 0)
        res = CMP_EQUAL;            /* the same bytes: equal without parsing */
    else if ((v = jsoncmp_fast(body_of(live), live->len, body_of(sh), sh->len, c->cc)) ==
             JSONCMP_EQUAL || (v == JSONCMP_DIFFERENT && c->cc->samples == 0))
        /* Decided in one pass over the texts; a sample's path and excerpts
         * come from jansson (below). */
        res = v == JSONCMP_EQUAL ? CMP_EQUAL : CMP_DIFFERENT;
    else {
        json_t *a = parse_body(live), *b = parse_body(sh);
        if (a == NULL || b == NULL) {
            /* Not JSON on one side and not the same bytes. */
            res = CMP_DIFFERENT;
            snprintf(path, sizeof(path), "$");
        } else {
            cmp_json_strip(a, c->cc->ignore, c->cc->n_ignore);
            cmp_json_strip(b, c->cc->ignore, c->cc->n_ignore);
            json_t *da, *db;
            res = cmp_json_equal(a, b, c->cc, path, sizeof(path), &da, &db) ?
                  CMP_EQUAL : CMP_DIFFERENT;
            if (res == CMP_DIFFERENT && c->cc->samples > 0) {
                cmp_excerpt_value(lx, sizeof(lx), da, da != NULL);
                cmp_excerpt_value(sx, sizeof(sx), db, db != NULL);
                d.excerpts_set = true;
            }
        }
        json_decref(a);
        json_decref(b);
    }
    if ((res == CMP_DIFFERENT || res == CMP_STATUS_MISMATCH) && c->cc->samples > 0) {
        if (!d.excerpts_set) {
            cmp_excerpt(lx, sizeof(lx), live->head, live->head_len);
            cmp_excerpt(sx, sizeof(sx), sh->head, sh->head_len);
        }
        d.path = path[0] ? path : NULL;
        d.live = lx;
        d.shadow = sx;
        account_compare(c->w, c->cfg, c->ep, c->version, res, &d);
    } else
        account_compare(c->w, c->cfg, c->ep, c->version, res, NULL);
}

/* Run, count, and let go of a comparison both of whose sides ended. */
static void
cmp_finish(struct shadow_cmp *c)
{
    cmp_run(c);
    make_unknown(c);                /* releases both sides and the budget */
    config_drop(c->cfg);
    free(c);
}

/* Would the comparison parse or walk the bodies? (json mode, both answered
 * alike, bodies not byte-identical: the identity check is cheap, the rest
 * grows with the bodies.) */
static bool
needs_walk(const struct shadow_cmp *c)
{
    const struct cmp_side *live = &c->side[CMP_LIVE], *sh = &c->side[CMP_SHADOW];
    return c->cc->mode == CFG_COMPARE_JSON && !c->unknown && live->ok && sh->ok &&
           live->status != 0 && live->status == sh->status &&
           !(live->len == sh->len && memcmp(body_of(live), body_of(sh), live->len) == 0);
}

/*
 * A live request that ends after its copy would otherwise compare the two
 * bodies in request_end(), before the client side writes the response's last bytes
 * to the client. Those comparisons wait instead in a per-thread list, run by
 * a callback the loop calls once the current one (which flushes the client)
 * returns: the cost stays on the worker's CPU but never in front of the live
 * answer. The list is the value of a thread key, whose destructor runs what
 * is left when a worker thread ends (its loop stopped with the callback
 * still due; the base, freed later, frees the pending callback). Off the
 * worker's thread (the main thread freeing what workers left) it runs at
 * once.
 */
static pthread_key_t defer_key;
static pthread_once_t defer_once = PTHREAD_ONCE_INIT;
static bool defer_ok;

static void
run_deferred(void *head)
{
    for (struct shadow_cmp *c = head, *next; c != NULL; c = next) {
        next = c->next;
        cmp_finish(c);
    }
}

static void
deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    struct shadow_cmp *head = pthread_getspecific(defer_key);
    pthread_setspecific(defer_key, NULL);
    run_deferred(head);
}

static void
defer_init(void)
{
    defer_ok = pthread_key_create(&defer_key, run_deferred) == 0;
}

static bool
defer(struct shadow_cmp *c)
{
    /* Only on the worker's own thread, whose loop runs the callback (not
     * while the main thread frees what stopped workers left). */
    if (c->w->base == NULL || !pthread_equal(c->w->thread, pthread_self()))
        return false;
    pthread_once(&defer_once, defer_init);
    if (!defer_ok)
        return false;
    struct shadow_cmp *head = pthread_getspecific(defer_key);
    /* One callback for all that wait: activated now, run after this one. */
    if (head == NULL && event_base_once(c->w->base, -1, EV_TIMEOUT, deferred_cb, NULL, NULL) != 0)
        return false;
    c->next = head;
    return pthread_setspecific(defer_key, c) == 0;
}

void
cmp_end(struct shadow_cmp *c, enum cmp_who who, bool ok)
{
    struct cmp_side *s = &c->side[who];
    if (s->ended)
        return;
    s->ended = true;
    s->ok = ok;
    if (!ok && !c->unknown)
        make_unknown(c);            /* nothing to compare: free it now */
    else if (s->cap - s->len > 4096) {
        /* A body that came in pieces may wait long for the other side:
         * give back what doubling reserved beyond it. */
        char *p = s->len > 0 ? realloc(s->body, s->len) : NULL;
        if (s->len == 0)
            free(s->body);          /* realloc(p, 0) may free and say NULL */
        if (p != NULL || s->len == 0) {
            s->body = p;
            s->cap = s->len;
        }
    }
    if (--c->refs > 0)
        return;
    if (who == CMP_LIVE && needs_walk(c) && defer(c))
        return;
    cmp_finish(c);
}

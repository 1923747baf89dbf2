/*
 * control/internal.h — shared by the files of control/ only (other folders
 * see control/control.h). jansson and libevent's evhttp, which the control
 * plane wraps, are included; hiredis types are only forward-declared.
 *
 * The fleet files (fleet.c, fleet_cas.c, fleet_conn.c; calls run
 * fleet_conn.c -> fleet_cas.c -> fleet.c) share the fleet's state and the
 * functions below; so do the rollout driver's (rollout.c,
 * rollout_change.c, rollout_judge.c; calls run rollout_judge.c ->
 * rollout_change.c -> rollout.c); and the admin API's (admin.c,
 * admin_change.c, admin_http.c; calls run admin.c -> admin_change.c ->
 * admin_http.c).
 */
#ifndef SLUICE_CONTROL_INTERNAL_H
#define SLUICE_CONTROL_INTERNAL_H

#include <event2/http.h>
#include <event2/util.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "control/control.h"

struct redisAsyncContext;
struct redisReply;
struct event;
struct event_base;

/* ---- fleet (fleet.c, fleet_cas.c, fleet_conn.c) ---------------------------- */

#define FLEET_POLL_S 5
#define FLEET_BOOT_TIMEOUT_MS 1000
/* The admin request's deadline for a change, its time in the queue
 * included: below common client timeouts (sluicectl's is 30 s, the tests'
 * 10 s), far above what a change takes (a few milliseconds a try). */
#define FLEET_CHANGE_DEADLINE_MS 8000

struct cas;

/* The fleet's one state (fleet.c defines it; each fleet file calls it F). */
struct fleet_state {
    bool enabled;
    struct event_base *base;
    char *name, *key, *channel, *cache_path;
    char *host, *password;
    int port, db;
    struct redisAsyncContext *ac, *sub;
    bool connected, subscribed;
    bool warned_down;
    struct event *reconnect_ev, *poll_ev, *next_ev, *retry_ev, *deadline_ev;
    struct json_t *shared;          /* the shared part applied now, as stored */
    uint64_t gen;                   /* its generation; 0: the file's seed */
    char hash[CFG_FLEET_HASH_LEN + 1];  /* its content hash, computed here */
    /* The generation last read from Redis when it differs from the one
     * applied because it could not be applied here: why, and the text, to
     * try again (every poll, every change). Changes are refused meanwhile. */
    struct json_t *pending;
    uint64_t pending_gen;
    char pending_hash[CFG_FLEET_HASH_LEN + 1];
    char pending_why[768];
    uint64_t logged_gen;            /* the failed generation last logged */
    char logged_hash[CFG_FLEET_HASH_LEN + 1];
    time_t absent_since;            /* the key seen absent while running the file's seed */
    struct cas *q_head, *q_tail;    /* changes in order; the head one runs */
    bool running;
    uint64_t answering;             /* the generation of the change being answered */
};
extern struct fleet_state fleet_state;

/* Why a GET was sent, for the log (fleet_fetch). */
enum { VIA_RECONNECT, VIA_SUBSCRIBE, VIA_MESSAGE, VIA_POLL };

/* fleet.c */
uint64_t fleet_now_ms(void);
void fleet_set_address(const char *host, int port);
struct config *fleet_build(struct json_t *instance_doc, struct json_t *shared,
                           const char *basedir, const char *path, struct cfg_errors *errs);
void fleet_set_running(struct json_t *shared, uint64_t gen, const char *hash);
void fleet_set_pending(struct json_t *shared, uint64_t gen, const char *hash, const char *why);
void fleet_applied(const char *via);
bool fleet_apply_shared(struct json_t *shared, uint64_t gen, const char *hash, const char *via);
void fleet_schedule_reconnect(void);
void fleet_drop_all(const char *why);

/* fleet_cas.c */
void fleet_fetch(int via);
void fleet_cas_finish(struct cas *c, int status, const char *msg, const struct cfg_errors *errs);
void fleet_on_deadline(evutil_socket_t fd, short what, void *arg);
void fleet_on_next(evutil_socket_t fd, short what, void *arg);
void fleet_on_retry(evutil_socket_t fd, short what, void *arg);

/* ---- the rollout driver (rollout.c, rollout_change.c, rollout_judge.c) ---- */

#define RO_TICK_MS 250
#define RO_KEEP_EVALS 20
#define RO_REFRESH_S 1.0            /* reread history and the leader this often */
#define RO_RETRY_S 1.0              /* a decided change that failed is tried again */

struct ro_change;

struct track {
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    /* the step the baseline belongs to */
    int step;
    int64_t since;
    bool agreement;                 /* the pre-live agreement check of a mirror */
    bool have_base;
    char control[CFG_NAME_MAX + 1];
    uint64_t base_v[M_COUNT], base_c[M_COUNT];
    double started;                 /* unix seconds the window began */
    double next_look;
    bool busy;                      /* a read or a change in flight */
    int tests;                      /* gates of this rollout that tested live data */
    struct json_t *evals;           /* newest last, at most RO_KEEP_EVALS */
    uint64_t evals_seq;             /* local appends, to drop stale rereads */
    double refreshed;
    bool refreshing;
    /* The decision of this step whose change is not applied yet: retried
     * every RO_RETRY_S, never judged again. */
    struct ro_change *decision;
    double retry_at;
    /* When this driver last made progress on the step: took it over, read
     * its baseline, or judged it. 3 x step_s without: paused. */
    double progress;
    struct track *next;
};

/* The driver's one state (rollout.c defines it; each rollout file calls it R). */
struct rollout_state {
    struct event_base *base;
    struct event *tick;
    struct track *tracks;
    bool stopped;
    /* the fleet lease */
    bool leader;
    double leader_until;            /* driving stops before the lease may have lapsed */
    double next_lease;
    bool lease_busy;
    char *driver;                   /* the lease holder's id as last read */
};
extern struct rollout_state rollout_state;

enum ro_op {
    RO_START, RO_PAUSE, RO_RESUME, RO_ABORT, RO_PROMOTE,    /* an operator's actions */
    RO_NEXT, RO_GO_LIVE, RO_ROLLBACK, RO_FINISH, RO_HALT,   /* the driver's */
};

struct ro_change {
    enum ro_op op;
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    int64_t now;
    /* the driver's changes apply only to the step they were judged on */
    int step;
    int64_t since;
    char reason[256];
    /* the totals the judged window ended on: the next step's baseline */
    bool have_totals;
    char control[CFG_NAME_MAX + 1];
    uint64_t tot_v[M_COUNT], tot_c[M_COUNT];
    bool zero_share;                /* RO_HALT: the share goes to 0 too */
    bool edit_refused;              /* change_edit() said no: asking again will not help */
    rollout_done_fn done;
    void *arg;
};

/* rollout.c */
double now_s(void);
struct track *track_find(const char *ep, const char *v, bool create);
bool redis_configured(const struct config *cfg);
int cmd(metrics_redis_reply_fn fn, void *arg, int argc, const char **argv);
void key_base(char *out, size_t n, const char *ep, const char *v);
void key_evals(char *out, size_t n, const char *ep, const char *v);
void counters_from(const struct redisReply *r, uint64_t *c);
struct json_t *counters_json(const uint64_t *c);
void counters_of_json(struct json_t *a, uint64_t *c);
int control_of(const struct cfg_endpoint *ep, int vi);
bool in_agreement_check(const struct cfg_version *v);
void store_base(struct track *t);
struct json_t *eval_json(const struct metrics_gate_result *g, int step, int pct, int look);
void push_eval(struct track *t, struct json_t *ev);
void refresh(struct track *t, double now);
void lease_key(char *out, size_t n);
void set_driver(const char *id);
void lease_tick(double now);

/* rollout_change.c */
extern const char *const ro_op_names[];     /* by enum ro_op */
void decide(struct track *t, struct ro_change *c);
void decision_try(struct track *t);
struct ro_change *change_new(enum ro_op op, const char *ep, const char *v);

/* ---- the admin API (admin.c, admin_change.c, admin_http.c) ----------------- */

/* The generation the admin auth was built from (a reference), and the admin
 * token and token signing built from it (admin_http.c, admin_cur()). */
extern struct config *admin_auth_cfg;
extern struct auth_ctx *admin_auth;

struct route {
    char ep[CFG_NAME_MAX * 4];
    char v[CFG_NAME_MAX * 4];
    char tail[64];                  /* "", "versions", "keys", "keys/regenerate", ... */
    bool has_ep, has_v;
};

/* A request answered later. Its connection may close meanwhile: libevent
 * then frees the connection but keeps a request the user still holds, and
 * frees it when it is answered; only the close callback must not outlive
 * us. */
struct waiting {
    struct evhttp_request *req;
    struct evhttp_connection *conn;
};

/* admin_http.c */
struct config *admin_cur(void);
json_int_t admin_shown_generation(const struct config *c);
void admin_reply(struct evhttp_request *req, int code, json_t *body);
json_t *admin_text_json(const char *s);
void admin_reply_error(struct evhttp_request *req, int code, const char *ecode,
                       const char *msg, const struct cfg_errors *errs);
const char *admin_status_code_name(int status);
json_t *admin_pct_json(int hundredths);
json_t *admin_describe_version(const struct cfg_endpoint *ep, int vi, json_t *docv);
json_t *admin_describe_endpoint(const struct config *cfg, const struct cfg_endpoint *ep);
bool admin_parse_route(const char *path, struct route *r);
json_t *admin_read_body(struct evhttp_request *req, bool required);
const struct cfg_endpoint *admin_find_ep(const char *name);
const struct cfg_endpoint *admin_ep_or_404(struct evhttp_request *req, const struct route *r);
int admin_version_or_404(struct evhttp_request *req, const struct cfg_endpoint *ep,
                         const struct route *r);
const struct cfg_endpoint *admin_ep_for(struct evhttp_request *req, const struct route *r,
                                        enum evhttp_cmd_type cmd);
bool admin_commit(struct evhttp_request *req, json_t *doc);
void admin_on_waiting_closed(struct evhttp_connection *conn, void *arg);
void admin_wait_begin(struct waiting *w, struct evhttp_request *req);
struct evhttp_request *admin_wait_end(struct waiting *w);

/* admin_change.c */
void admin_on_endpoint(struct evhttp_request *req, const struct route *r);
void admin_on_versions(struct evhttp_request *req, const struct route *r);
void admin_on_keys(struct evhttp_request *req, const struct route *r);
void admin_on_rollout(struct evhttp_request *req, const struct route *r);

#endif

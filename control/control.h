/*
 * control — the control plane, on the main thread: config generations and
 * reload (control.c), the admin API and dashboard (admin.c, admin_change.c,
 * admin_http.c, admin_gate.c), fleet sync through Redis (fleet.c,
 * fleet_cas.c, fleet_conn.c), the rollout driver (rollout.c,
 * rollout_change.c, rollout_judge.c), active health checks (health.c) and
 * systemd notifications (notify.c); main.c is the process. It reaches the
 * data plane only through gateway/gateway.h (start, publish a generation,
 * drain, stop, counters). This header is what main.c and the tests may
 * use; what the files of control/ share among themselves is
 * control/internal.h.
 *
 * Who calls whom:
 *   main.c -> control.c -> gateway (workers_*)
 *   admin*.c -> control.c, fleet*.c, rollout*.c
 *   fleet*.c, rollout*.c -> control.c (control_apply, control_commit): a
 *   fleet generation or a rollout step applies like a reload
 *   control.c calls no file above it: a reload's fleet part is fleet_reload,
 *   registered by main.c (control_set_reload)
 */
#ifndef SLUICE_CONTROL_H
#define SLUICE_CONTROL_H

#include "gateway/gateway.h"
#include "routing/routing.h"
#include "auth/auth.h"

/* ---- control plane (control.c) --------------------------------------------- */

struct json_t;
/* Bind the listeners of cfg and start the workers; cfg becomes current. */
int control_start(struct config *cfg, int workers, char *err, size_t errlen);
/* --state-dir: admin changes, generated keys and the fleet cache are
 * written there instead of beside the config file (created 0700 if
 * missing); -1 with why. */
int control_set_state_dir(const char *dir, char *err, size_t errlen);
/* Where runtime state for config_path goes: DIR/<its name><suffix> with a
 * state directory, else config_path<suffix> (malloc'ed). */
char *control_state_path(const char *config_path, const char *suffix);
/* The config to run, read and validated only: the file, or with a state
 * directory the edited document kept there when it is at least as new. */
struct config *control_read(const char *path, struct cfg_errors *errs);
/* Load a file (or, with a state directory, the edited document kept there
 * when it is at least as new), generating and persisting missing keys first. */
struct config *control_load(const char *path, struct cfg_errors *errs);
/* Re-read the config file and apply it; -1 with the reasons. */
int control_reload(char *err, size_t errlen, struct cfg_errors *errs);
/* Validate, persist and apply an edited document (admin changes): 0, 400
 * (errs filled), or 500 (err: the file could not be written). */
int control_commit(struct json_t *doc, struct cfg_errors *errs, char *err,
                   size_t errlen);
int control_apply(struct config *cfg, char *err, size_t errlen);
/* What a reload does to the re-read file's config before it applies: in
 * a fleet the shared part stays the fleet's (fleet_reload, registered by
 * main.c, so that control.c does not call up into fleet.c). The config in
 * is taken over; the one out, or NULL with errs. */
typedef struct config *(*control_reload_fn)(struct config *cfg, struct cfg_errors *errs);
void control_set_reload(control_reload_fn fn);
/* Who is told of each applied generation and each reload's outcome (the
 * /metrics families of prometheus.c, registered by main.c). */
typedef void (*control_applied_fn)(const struct config *cfg);
typedef void (*control_reloaded_fn)(bool ok);
void control_watch(control_applied_fn applied, control_reloaded_fn reloaded);
struct config *control_current(void);
void control_stop(void);
/* The metrics writer and its backlog (main thread). */
void control_metrics_start(struct event_base *base);
struct metrics_redis *control_metrics(void);
struct metrics_backlog *control_backlog(void);

/* ---- fleet (fleet.c), main thread: shared config in Redis (SPEC §6) ------- */

/* For a config with "fleet": the config to start with: the file's instance
 * part with the fleet's shared part from Redis (seeded from the file when
 * absent), else from the cache file, else the file as it is. file_cfg is
 * taken over; NULL with errs. Without "fleet", file_cfg itself. */
struct config *fleet_boot(struct config *file_cfg, struct cfg_errors *errs);
/* Connect, subscribe and poll (after control_start). */
void fleet_start(struct event_base *base);
void fleet_stop(void);
/* A reload's file config in a fleet: the instance part from the file, the
 * shared part the fleet's; joining, leaving or renaming needs a restart
 * (control_reload_fn). */
struct config *fleet_reload(struct config *cfg, struct cfg_errors *errs);
bool fleet_enabled(void);
bool fleet_connected(void);
const char *fleet_name(void);
/* The fleet generation applied here (0: the file's seed) and its content
 * hash; fleet_behind() the reason (and generation) when the fleet's newest
 * could not be applied here, else NULL. */
uint64_t fleet_generation(void);
const char *fleet_hash(void);
const char *fleet_behind(uint64_t *gen);
/* Stamp a config built from the shared part in use with its generation. */
void fleet_stamp(struct config *cfg);
/* A re-read file's document with the shared part in use put in (new ref). */
struct json_t *fleet_merge_current(struct json_t *file_doc);
/* An admin change in a fleet: edit() changes a copy of the document in use
 * and returns 0 or an HTTP status with er filled; it may run again on a
 * newer generation after a lost race. Changes are queued and run one at a
 * time. done() gets 0 once the change is in Redis (confirmed by
 * redis.wait_replicas) and applied here, else 400 (errs), 404, 409 (lost
 * races until the deadline) or 503 (with why: Redis away, this instance
 * behind the fleet, written but not confirmed or not applied here). */
typedef int (*fleet_edit_fn)(void *arg, struct json_t *doc, struct cfg_edit_result *er);
typedef void (*fleet_done_fn)(void *arg, int status, const char *message,
                              const struct cfg_errors *errs);
void fleet_change(fleet_edit_fn edit, fleet_done_fn done, void *arg);
/* Inside done() with status 0: the generation the change was written as. */
uint64_t fleet_answered_generation(void);
/* GET /admin/v1/fleet: status 200 with a body (taken over), or an error. */
typedef void (*fleet_status_fn)(void *arg, int status, struct json_t *body, const char *why);
void fleet_status(fleet_status_fn done, void *arg);

/* ---- progressive rollout (rollout.c), main thread: SPEC §8 ----------------- */

/* The driver's timer: judges running rollouts (the fleet's lease holder
 * only) and keeps every instance's copy of the gate history. */
void rollout_start(struct event_base *base);
/* Clean shutdown: give the fleet's lease back (before the final flush,
 * which sends it). */
void rollout_release(void);
void rollout_stop(void);
/* POST …/versions/{v}/rollout: "start", "pause", "resume", "abort" or
 * "promote", applied like any admin change; done() gets 0 once applied,
 * else 400, 404, 409, 500 or 503 with a message (errs for a 400). */
typedef void (*rollout_done_fn)(void *arg, int status, const char *message,
                                const struct cfg_errors *errs);
void rollout_action(const char *ep, const char *v, const char *action, rollout_done_fn done,
                    void *arg);
/* The plan and the state as in the config (null when absent), and the
 * GET …/rollout description. New references. */
struct json_t *rollout_plan_json(const struct cfg_rollout *ro);
struct json_t *rollout_state_json(const struct cfg_rollout *ro);
struct json_t *rollout_describe(const struct cfg_endpoint *ep, int vi);

/* ---- the control plane's part of /metrics (prometheus.c), main thread ------- */

/* A re-read of the config file succeeded or failed. */
void prometheus_reloaded(bool ok);
/* A generation was applied: the effective shares start over. */
void prometheus_generation(const struct config *cfg);
/* The rollout gate judged ep/v ("pass", "hold", "fail"). */
void prometheus_gate_verdict(const char *ep, const char *v, const char *verdict);
/* Append build info, reload status, shares, rollouts, upstream health and
 * the process_* families. */
struct evbuffer;
void prometheus_render(struct evbuffer *b);
void prometheus_stop(void);

/* ---- rollout notifications (webhook.c), main thread: SPEC §8 ---------------- */

void webhook_init(struct event_base *base);
/* Queue one event for n's URL (body taken over); sent off the caller's path,
 * in order per URL, retried with backoff for up to 10 minutes. */
void webhook_post(const struct cfg_notify *n, const char *event, struct json_t *body);
/* The rollout change op ("start", "next_step", "rollback", … as rollout.c
 * names them) was applied to ep/v here: post its event ("started", "step",
 * "paused", "resumed", "promoted", "rolled_back", "aborted") if the plan
 * has "notify"; gate is the evaluation that decided it, or NULL. */
void webhook_rollout(const char *op, const char *ep, const char *v, bool by_driver,
                     const struct json_t *gate);
void webhook_stop(void);

/* ---- active health checks (health.c), main thread --------------------------- */

void health_init(struct event_base *base);
/* Check the upstreams of cfg's versions that have a health_check. */
void health_apply(const struct config *cfg);
void health_stop(void);

/* ---- admin (admin.c) ------------------------------------------------------- */

/* Listen on cfg's admin address; requests are answered from the control
 * plane's current generation (control_current()). */
int admin_start(struct event_base *base, struct config *cfg, char *err,
                size_t errlen);
void admin_set_draining(void);
void admin_stop(void);

/* ---- span export (trace_export.c), main thread: SPEC §10 ------------------ */

/* The exporter with one ring per worker, handed to the workers (before
 * control_start()); -1 with a reason. */
int trace_export_start(struct event_base *base, const struct config *cfg, int n_workers,
                       char *err, size_t errlen);
/* A new generation's "tracing" (endpoint, sampling, batching). */
void trace_export_apply(const struct config *cfg);
/* After the workers ended: send what the rings hold (at most deadline_ms),
 * then free the exporter. */
void trace_export_stop(int deadline_ms);
/* The span counters in Prometheus text (sluice_spans_dropped_total ...). */
void trace_export_prometheus(struct evbuffer *out);

/* ---- systemd notifications (notify.c), main thread ------------------------- */

void notify_ready(unsigned long long generation);
void notify_stopping(void);
/* control_reload() between RELOADING=1 and READY=1 with its outcome. */
int notify_reload(char *err, size_t errlen, struct cfg_errors *errs);

/* ---- the admin listener's gate (admin_gate.c), main thread ------------------ */

/* Requests the gate does not pass on are replaced by GET PREFIX WHY, WHY
 * one of "unauthorized", "body_refused", "malformed", "malformed_url",
 * "head_too_large", "reserved" (a client's request for that prefix). */
#define ADMIN_GATE_PREFIX "/__sluice_gate/"
typedef bool (*admin_gate_auth_fn)(const char *authorization, size_t len);
struct evhttp;
struct evconnlistener;
/* Gate every connection of http (accepted by listener): token before body,
 * at most max_connections at once. */
int admin_gate_attach(struct evhttp *http, struct evconnlistener *listener,
                      int max_connections, admin_gate_auth_fn authorized);
void admin_gate_set_max(int max_connections);
void admin_gate_detach(void);       /* after evhttp_free() */
/* evhttp_connection_set_closecb() for a gated connection (the gate keeps
 * the connection's own close callback). */
struct evhttp_connection;
void admin_gate_on_close(struct evhttp_connection *evcon,
                         void (*cb)(struct evhttp_connection *, void *), void *arg);
int admin_gate_open(void);          /* connections open now */
/* One connection's input, without sockets (the filter and the fuzz target):
 * moves what may reach evhttp from src to dst. */
struct admin_gate_conn;
enum admin_gate_result { ADMIN_GATE_OK, ADMIN_GATE_DROPPING };
struct admin_gate_conn *admin_gate_conn_new(admin_gate_auth_fn authorized);
void admin_gate_conn_free(struct admin_gate_conn *g);
enum admin_gate_result admin_gate_feed(struct admin_gate_conn *g, struct evbuffer *src,
                                       struct evbuffer *dst);

#endif

/*
 * control/internal.h — shared by the files of control/ only (other folders
 * see control/control.h). No library header: hiredis and jansson types are
 * forward-declared.
 *
 * The fleet files (fleet.c, fleet_cas.c, fleet_conn.c; calls run
 * fleet_conn.c -> fleet_cas.c -> fleet.c) share the fleet's state and the
 * functions below.
 */
#ifndef SLUICE_CONTROL_INTERNAL_H
#define SLUICE_CONTROL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "control/control.h"

struct redisAsyncContext;
struct json_t;
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
    struct json_t *shared;                 /* the shared part applied now, as stored */
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
struct config *fleet_build(struct json_t *instance_doc, struct json_t *shared, const char *basedir, const char *path,
                     struct cfg_errors *errs);
void fleet_set_running(struct json_t *shared, uint64_t gen, const char *hash);
void fleet_set_pending(struct json_t *shared, uint64_t gen, const char *hash, const char *why);
void fleet_applied(const char *via);
bool fleet_apply_shared(struct json_t *shared, uint64_t gen, const char *hash, const char *via);
void fleet_schedule_reconnect(void);
void fleet_drop_all(const char *why);

/* fleet_cas.c */
void fleet_fetch(int via);
void fleet_cas_finish(struct cas *c, int status, const char *msg, const struct cfg_errors *errs);
void fleet_on_deadline(int fd, short what, void *arg);
void fleet_on_next(int fd, short what, void *arg);
void fleet_on_retry(int fd, short what, void *arg);

#endif

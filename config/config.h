/*
 * config — the gateway's configuration as an immutable snapshot.
 *
 * config_parse() turns a JSON document into a complete, validated snapshot
 * or a list of errors, each naming its JSON path; it touches nothing else.
 * The snapshot is reference counted: config_take() / config_drop(). The last
 * drop frees it. A snapshot is never modified after config_parse() returns.
 *
 * This module depends on nothing else of ours; jansson is wrapped here.
 */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tracing/tracing.h"

struct json_t;

#define CFG_MAX_VERSIONS 6
#define CFG_MAX_UPSTREAMS 64
#define CFG_NAME_MAX 32
#define CFG_PCT_SCALE 100       /* percentiles are kept in hundredths */
#define CFG_PCT_TOTAL 10000     /* 100 % in hundredths */

enum cfg_sticky_kind {
    CFG_STICKY_NONE = 0,
    CFG_STICKY_HEADER,          /* key taken from a request header */
    CFG_STICKY_COOKIE,          /* key taken from a cookie */
};

enum cfg_group {
    CFG_GROUP_CONTROL = 0,
    CFG_GROUP_TREATMENT,
    CFG_GROUP_SHADOW,
};

struct cfg_health {
    bool enabled;
    char *path;
    int interval_ms;
    int timeout_ms;
    int failure_threshold;
    int success_threshold;
};

struct cfg_upstream {
    char *address;              /* as written: "host:port", "[v6]:port", "unix:/p" */
    char *host;                 /* host or unix path */
    int port;                   /* 0 for unix sockets */
    bool is_unix;
};

/* Shadow comparison of a mirror version (SPEC §7). */
enum cfg_compare_mode {
    CFG_COMPARE_OFF = 0,
    CFG_COMPARE_JSON,           /* both bodies parsed, compared as JSON */
    CFG_COMPARE_EXACT,          /* byte for byte, by streaming SHA-256 */
};

#define CFG_COMPARE_MAX_IGNORE 32
#define CFG_COMPARE_MAX_SAMPLES 1000

struct cfg_compare {
    enum cfg_compare_mode mode;
    double abs_tol, rel_tol;        /* numbers equal within either */
    char **ignore;                  /* member paths "a.b.c", removed before comparing */
    int n_ignore;
    uint64_t max_bytes;             /* json: a larger body is "unknown" */
    int samples;                    /* disagreements kept in Redis, 0: none */
};

/* A progressive rollout (SPEC §8): the plan an operator sets, and the state
 * only the rollout driver writes (control/rollout_change.c). */
#define CFG_ROLLOUT_MAX_STEPS 20

enum cfg_rollout_phase {
    CFG_ROLLOUT_NONE = 0,       /* no rollout_state: never started */
    CFG_ROLLOUT_RUNNING,
    CFG_ROLLOUT_PAUSED,
    CFG_ROLLOUT_PROMOTED,
    CFG_ROLLOUT_ROLLED_BACK,
    CFG_ROLLOUT_ABORTED,
};

/* "rollout": {"notify": {"url", "headers"}} (SPEC §8, config/notify.c). */
#define CFG_NOTIFY_MAX_HEADERS 16
struct cfg_notify {
    char *url;                  /* http:// or https://; NULL: no notifications */
    int n_headers;
    char *header_names[CFG_NOTIFY_MAX_HEADERS];
    char *header_values[CFG_NOTIFY_MAX_HEADERS];
};

struct cfg_rollout {
    bool has_plan;
    int steps[CFG_ROLLOUT_MAX_STEPS];   /* traffic percentiles, hundredths, increasing */
    int n_steps;
    int step_s;
    bool promote;
    uint64_t min_requests;
    double max_error_rate_increase;     /* a fraction */
    double max_p99_ratio;               /* 0: not checked */
    double min_agreement;               /* a fraction */
    struct cfg_notify notify;
    /* rollout_state */
    enum cfg_rollout_phase phase;
    int step;                   /* index into steps */
    int64_t since;              /* unix seconds of the last state change */
    char *reason;               /* NULL when none */
    /* "operator_changed": an operator changed the version after its rollout
     * was rolled back or aborted (config_edit_rollout_operator_change). */
    bool operator_changed;
    /* Derived: rolled back or aborted and not changed since, so pins
     * (X-Sluice-Version) are refused with 404 (SPEC §3.3). */
    bool refuses_pins;
};

struct cfg_version {
    char name[CFG_NAME_MAX + 1];
    struct cfg_upstream *upstreams;
    int n_upstreams;
    char *path;                 /* NULL: forward the path as received */
    int traffic;                /* configured percentile, hundredths */
    int effective;              /* effective share (SPEC §2.2), hundredths */
    int mirror;                 /* mirror percentile, hundredths */
    bool is_default;
    enum cfg_group group;       /* CONTROL or TREATMENT */
    char *description;
    int max_concurrent;         /* replica_max_concurrent_requests, 0 = off */
    int max_wait_ms;            /* max_request_wait_time_ms */
    bool upstream_http2;        /* "upstream_protocol": "http2" (prior knowledge) */
    struct cfg_health health;
    struct cfg_compare compare;
    struct cfg_rollout rollout;
};

struct cfg_endpoint {
    char name[CFG_NAME_MAX + 1];
    bool auth_keys;
    bool auth_tokens;
    char *key_primary;          /* resolved secret, may be NULL */
    char *key_secondary;
    enum cfg_sticky_kind sticky;
    char *sticky_name;
    int scoring_timeout_ms;
    bool failover_to_default;
    bool pinning;               /* "pinning" (default true): X-Sluice-Version honoured */
    struct cfg_version versions[CFG_MAX_VERSIONS];
    int n_versions;
    int default_version;        /* index into versions */
};

struct cfg_listener {
    char *address;
    char *host;
    int port;
    bool tls;
    bool http2;                 /* HTTP/2: ALPN h2 (TLS), prior knowledge (plain) */
    char *certificate;          /* absolute or config-relative path, resolved */
    char *private_key;
};

struct cfg_limits {
    size_t max_header_bytes;
    uint64_t max_body_bytes;
    int header_timeout_ms;
    int idle_timeout_ms;
    int max_connections;
    int drain_timeout_ms;
    int max_pipelined;              /* requests read ahead of the response written */
    int h2_max_concurrent_streams;  /* SETTINGS_MAX_CONCURRENT_STREAMS we announce */
    uint64_t max_client_output_bytes;   /* reading pauses above this much unsent output */
    int send_timeout_ms;            /* a client that takes no bytes this long is closed */
    int upstream_idle_timeout_ms;   /* idle pooled upstream connections close after this */
    int max_shadow_inflight;        /* shadow copies per worker */
    int shadow_timeout_ms;
    uint64_t compare_budget_bytes;  /* bodies retained for comparison, per worker */
};

#define CFG_MAX_SENTINELS 16

struct cfg_redis {
    char *address;              /* NULL with sentinels */
    char *host;
    int port;
    int db;
    char *password;
    int flush_interval_ms;
    int retention_minutes;
    /* Sentinel discovery instead of address: master_name is asked of
     * sentinel_hosts[i]:sentinel_ports[i] in turn. */
    int n_sentinels;
    char **sentinel_hosts;
    int *sentinel_ports;
    char *master_name;
    int wait_replicas;          /* WAIT for this many replicas per metrics batch; 0: no WAIT */
    int wait_timeout_ms;
};

struct cfg_trusted_issuer {
    char *issuer;
    char *audience;
    char *algorithm;
    char *public_key;           /* PEM text */
};

struct cfg_tokens {
    char *issuer;
    char *signing_key;          /* resolved secret */
    char *algorithm;
    int ttl_s;
    int leeway_s;
    struct cfg_trusted_issuer *trusted;
    int n_trusted;
};

struct cfg_log {
    char *access_log;           /* "stderr", "off" or a path */
    char *level;
};

#define CFG_FLEET_HASH_LEN 64       /* SHA-256 in hex */

struct config {
    int refs;                   /* atomic; use config_take/config_drop */
    uint64_t generation;        /* this process's counter: every apply, reloads too */
    /* In a fleet, the shared part's generation and content hash (0 and ""
     * for the file's own endpoints before the fleet's are known): what
     * /readyz, sluice:instances and the answers report (SPEC §6). */
    uint64_t fleet_generation;
    char fleet_hash[CFG_FLEET_HASH_LEN + 1];
    char *path;                 /* the file it was read from, may be NULL */
    char *basedir;
    struct json_t *doc;         /* the document as given, for persistence */

    int workers;
    struct cfg_listener *listeners;
    int n_listeners;
    char *admin_address;
    char *admin_host;
    int admin_port;
    char *admin_token;              /* at least CFG_ADMIN_TOKEN_MIN bytes, no placeholder */
    int admin_max_connections;      /* the admin listener's, at once */
    struct cfg_redis redis;
    struct cfg_tokens tokens;
    struct cfg_limits limits;
    struct cfg_log log;
    struct tracing_config tracing;  /* "tracing" (SPEC §10), tracing/config.c */
    struct cfg_endpoint *endpoints;
    int n_endpoints;
    char *fleet_name;           /* "fleet": {"name"}; NULL outside a fleet */
    int fleet_lease_ms;         /* "fleet": {"leader_lease_ms"}: the rollout driver's lease */
};

/* Errors collected while parsing: each is "json.path: reason". */
struct cfg_errors {
    char **msg;
    int n;
    int cap;
};

void cfg_errors_init(struct cfg_errors *e);
void cfg_errors_free(struct cfg_errors *e);
void cfg_errors_add(struct cfg_errors *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* All errors joined by "\n" into a malloc'ed string. */
char *cfg_errors_join(const struct cfg_errors *e, const char *sep);

/*
 * Parse and validate a document. basedir resolves relative paths (file:
 * secrets, certificates). Returns a snapshot with refs = 1, or NULL with
 * errors appended to errs. The document is deep-copied; the caller keeps
 * ownership of doc.
 */
struct config *config_parse(struct json_t *doc, const char *basedir,
                            struct cfg_errors *errs);

/* Read a file and config_parse() it; a read or JSON syntax error is
 * reported in errs as "FILE: reason" or "FILE:LINE:COL: reason". */
struct config *config_load(const char *path, struct cfg_errors *errs);

/* Reference counting; thread safe. config_drop(NULL) is a no-op. */
struct config *config_take(struct config *c);
void config_drop(struct config *c);

/* Lookups on a snapshot; NULL / -1 when absent. name need not be NUL-ended. */
const struct cfg_endpoint *config_endpoint(const struct config *c,
                                           const char *name, size_t len);
int config_version_index(const struct cfg_endpoint *ep,
                         const char *name, size_t len);

/* A name valid for an endpoint or version (SPEC §2.1). */
bool config_name_valid(const char *name, size_t len);

/* Parse "host:port", "[v6]:port" or "unix:/path". 0 or -1. */
int config_parse_address(const char *addr, char **host, int *port,
                         bool *is_unix);

const char *config_group_name(enum cfg_group g);
const char *config_compare_mode_name(enum cfg_compare_mode m);
/* "running", "paused", ...; NULL for CFG_ROLLOUT_NONE. */
const char *config_rollout_phase_name(enum cfg_rollout_phase ph);
/* config/notify.c: a rollout plan's "notify" object at path, errors named
 * by path (e.g. endpoints[0].versions[1].rollout.notify.url). */
void config_notify_parse(struct json_t *obj, const char *path, struct cfg_notify *n,
                         struct cfg_errors *errs);
void config_notify_free(struct cfg_notify *n);
/* The parts of an http:// or https:// URL; 0, or -1 with why (static text). */
struct cfg_url {
    bool tls;
    char host[256];             /* without the brackets of an IPv6 literal */
    int port;
    const char *path;           /* into the URL: "/..." with the query, or "" */
};
int config_url_parse(const char *url, struct cfg_url *u, const char **why);
/* A member path for compare.ignore: names joined by '.', none empty, no
 * control characters, at most 256 bytes. */
bool config_compare_path_valid(const char *s);

#define CFG_ADMIN_TOKEN_MIN 16

/* Text checks shared by the config, the admin API and the logs. */
/* True when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
/* The length of the well-formed UTF-8 character at s[0..avail), 0 when the
 * bytes there are not one; *need is the length its lead byte announces. */
size_t config_utf8_char(const unsigned char *s, size_t avail, size_t *need);
bool config_utf8_valid(const char *s, size_t len);
/* The largest n <= len such that s[0..n) does not end inside a multi-byte
 * character: where a text of len bytes may be cut. */
size_t config_utf8_cut(const char *s, size_t len);
/* Make a NUL-ended string valid UTF-8 in place: a character cut at the end
 * is dropped, any other invalid byte becomes '?'. For error texts that may
 * have been cut by a fixed-size buffer. */
void config_utf8_fix(char *s);
/* s shortened for quoting in a message: copied into out (cap >= 8) whole,
 * or cut at a character boundary with "..." appended. Returns out. */
const char *config_utf8_clip(char *out, size_t cap, const char *s);
/* True when s has no control characters (C0, DEL) and no spaces: for
 * paths and addresses that end up in request lines. */
bool config_text_plain(const char *s);
/* s[0..len) escaped as the inside of a JSON string into out: at most
 * cap - 1 bytes and a NUL (cap >= 1), never cutting a character or an
 * escape; invalid UTF-8 bytes become \ufffd. Returns the bytes written. */
size_t config_json_escape(char *out, size_t cap, const char *s, size_t len);

/* ---- edits of the document (edit.c) ----------------------------------
 *
 * Each operation changes doc in place and returns 0, or an HTTP status
 * (400, 404, 409) with a message in r; the caller works on a copy, then
 * validates it whole with config_parse() before anything is applied.
 */
struct cfg_edit_result {
    int status;
    bool created;
    bool rollout_paused;        /* update_version paused a running rollout */
    char message[512];
};

int config_edit_create_version(struct json_t *doc, const char *ep,
                               struct json_t *body, struct cfg_edit_result *r);
int config_edit_update_version(struct json_t *doc, const char *ep, const char *v,
                               struct json_t *body, struct cfg_edit_result *r);
/* An operator's own change to version object x: pause its running rollout,
 * if any (sets r->rollout_paused); after a rollback or an abort, mark the
 * state "operator_changed", which lifts the refusal of pins (SPEC §3.3). */
void config_edit_rollout_operator_change(struct json_t *x, struct cfg_edit_result *r);
int config_edit_delete_version(struct json_t *doc, const char *ep, const char *v,
                               struct cfg_edit_result *r);
int config_edit_put_endpoint(struct json_t *doc, const char *ep,
                             struct json_t *body, struct cfg_edit_result *r);
int config_edit_delete_endpoint(struct json_t *doc, const char *ep,
                                struct cfg_edit_result *r);
/* key_type "Primary" or "Secondary" (any case). */
int config_edit_regen_key(struct json_t *doc, const char *ep, const char *which,
                          struct cfg_edit_result *r);
/* Secrets set through the admin API take literal values only (SPEC §3.7):
 * every env:/file: secret of `after` must be the same value at the same
 * place in `before` (carried along from the operator's file). 0, or 400
 * with the secret's JSON path in r. */
int config_edit_check_secrets(struct json_t *before, struct json_t *after,
                              struct cfg_edit_result *r);
/* Generate the keys missing for endpoints with key auth; true if any. */
bool config_fill_keys(struct json_t *doc);
/* 32 random bytes, base64url without padding (43 characters), malloc'ed. */
char *config_new_key(void);
/* The endpoint object of that name in a document, or NULL. */
struct json_t *config_doc_endpoint(struct json_t *doc, const char *ep, size_t *index);
/* Write doc to path atomically: temporary file, fsync, rename, fsync of the
 * folder. 0, or -1 with a reason; on failure the old file is untouched. */
int config_save(const char *path, struct json_t *doc, char *err, size_t errlen);

/* ---- fleets: the shared part of a config (fleet.c, SPEC §6) -------------
 *
 * A fleet keeps `endpoints` and `tokens` in Redis as one JSON text
 * {"generation": N, "hash": H, "endpoints": [...], "tokens": {...}}; everything else
 * stays in each instance's file. The effective document is the file's
 * instance part with the shared part put in.
 */
#define CFG_FLEET_NAME_MAX 64

/* 1 to CFG_FLEET_NAME_MAX of A-Z a-z 0-9 . _ - (it goes into Redis keys,
 * inside a hash tag, so never a brace). */
bool config_fleet_name_valid(const char *name);
/* The shared part of doc at generation gen: a new object with deep copies
 * of doc's endpoints and tokens (tokens left out when doc has none) and
 * their content hash. */
struct json_t *config_fleet_shared(struct json_t *doc, uint64_t gen);
/* A new document: instance's fields other than endpoints and tokens, with
 * shared's endpoints and tokens in their place. */
struct json_t *config_fleet_merge(struct json_t *instance, struct json_t *shared);
/* Check a shared part read from Redis or a cache file: an object with a
 * positive integer generation, an endpoints array, an optional tokens
 * object, an optional hash string and nothing else. The new object (a reference) and its generation,
 * or NULL with a reason. */
struct json_t *config_fleet_parse(const char *text, size_t len, uint64_t *gen,
                                  char *err, size_t errlen);
/* The content hash of a shared part: SHA-256 (hex) of its endpoints and
 * tokens, serialised compactly with sorted keys; false when out of memory. */
bool config_fleet_hash(struct json_t *shared, char out[CFG_FLEET_HASH_LEN + 1]);
/* The "hash" member as stored ("" when absent): what the compare-and-set
 * compares, since the Lua script cannot compute SHA-256. */
const char *config_fleet_stored_hash(struct json_t *shared);
/* Whether two generations are the same: number and content hash. An
 * instance applies the fleet's generation whenever either differs from
 * what it runs, older numbers included (a failover that lost a write), so
 * two instances never serve different content under one number. */
bool config_fleet_same(uint64_t gen_a, const char *hash_a, uint64_t gen_b, const char *hash_b);

#endif

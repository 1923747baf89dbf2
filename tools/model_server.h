/*
 * sluice-model's own declarations, shared by its files (model_server.c,
 * model_fast.c, model_answer.c). Calls run model_server.c -> model_fast.c
 * -> model_answer.c.
 */
#ifndef SLUICE_MODEL_SERVER_H
#define SLUICE_MODEL_SERVER_H

#include <sys/socket.h>
#include <sys/time.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

/* The options, and what was seen (model_answer.c). */
extern const char *name;
extern int latency_ms;
extern int jitter_ms;
extern double error_rate;
extern double noise_eps;
extern int random_field;
extern int idle_close_max_ms;
extern unsigned long long n_conns, n_reqs;
extern struct event_base *base;
extern double fault_rate;
extern int slow_max_ms;

/* A request being answered by the evhttp server. */
struct pending {
    struct evhttp_request *req;
    struct event *ev;
    int status;
    long long resp_bytes;
};

/* model_answer.c */
struct timeval idle_close_delay(void);
void answer(struct pending *p);

/* model_fast.c: the faults, named and counted (printed on exit) */
enum fault { F_NONE, F_DELAY, F_STALL, F_BIG, F_CHUNKED, F_RESET, F_CUT, F_DROP, F_RST,
             F_204BODY, F_304BODY, F_CLOSE_AFTER, F_STATUS, F_GARBAGE, F_COUNT };
extern const char *const fault_names[F_COUNT];
extern unsigned long long n_faults[F_COUNT];
void fast_build_responses(void);
void fast_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int slen,
                 void *arg);

#endif

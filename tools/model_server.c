/*
 * sluice-model: a small model server for tests, the demo and benchmarks.
 *
 * Answers every request with a JSON object naming its version and echoing
 * the request's method, path, headers and body size and hash:
 *   {"version", "status", "method", "uri", "body_bytes", "body_fnv1a",
 *    "score", "scores", ["nonce",] "headers"}
 * "score" (a float in [0,1)) and "scores" (three of them) are computed from
 * the body bytes, so two servers given the same body agree exactly: shadow
 * comparison tests (SPEC §7) get equal answers unless --noise or
 * --random-field makes them differ.
 *
 * Options:
 *   --listen HOST:PORT|unix:/path  where to listen (default 127.0.0.1:5001);
 *                              port 0 binds a free port. For TCP the server
 *                              prints "listening on PORT" (one line, stdout,
 *                              flushed) once it accepts connections.
 *   --name V                   the version name in answers (default "model")
 *   --latency-ms N, --jitter-ms N  answer after N ms plus 0..jitter ms
 *   --error-rate F             answer 500 to a fraction F of requests
 *   --noise EPS                add uniform noise in [-EPS, EPS] to each score
 *   --random-field             add "nonce": 32 random hex digits
 *   --idle-close-max-ms N      a keep-alive connection that goes idle after a
 *                              response is closed by the server at a uniformly
 *                              random moment within N ms, to reproduce the
 *                              upstream keep-alive race (a proxy reusing a
 *                              connection just as the server closes it)
 *   --fast                     benchmark backend: no evhttp, one raw-socket
 *                              responder that reads request heads and bodies
 *                              (Content-Length or chunked, pipelined requests
 *                              in order) and answers each with the same small
 *                              fixed JSON, HTTP/1.1 with Content-Length, keep-
 *                              alive unless the client sends Connection: close
 *                              or speaks HTTP/1.0. Ignores the per-request
 *                              controls, latency, errors and scores; honours
 *                              --idle-close-max-ms. About three times cheaper
 *                              per request than the evhttp server, so a bench
 *                              measures the proxy in front, not the model.
 *
 * Faults (with --fast; the chaos soak's upstreams, tests/soak): a request
 * gets a fault when it carries "X-Test-Fault: KIND[=N]", or, without one, at
 * random with --fault-rate F (each kind equally likely, N random):
 *   delay=MS       answer after MS ms
 *   stall=MS       send the head and half the body, the rest MS ms later
 *   big=N          a body of N bytes (Content-Length)
 *   chunked=N      a body of N bytes, chunked
 *   reset          send the head and part of the body, then a TCP reset
 *   cut            send the head and part of the body, then close
 *   drop           close without answering
 *   rst            reset without answering
 *   204body, 304body  a 204 or 304 followed by body bytes (304 with a
 *                  Content-Length), which a proxy must not relay
 *   close-after    answer whole, then close without a "Connection: close"
 *                  (the keep-alive race: the proxy reuses it as it closes)
 *   status=N       answer with status N
 *   garbage        a response that is not HTTP
 *   --fault-rate F     the share of requests without X-Test-Fault that get a
 *                      random fault (default 0)
 *   --slow-max-ms N    the bound of random delay and stall times (default 1000)
 *   --seed N           seed the random choices (default: the process id)
 * On exit (SIGTERM) the --fast server prints one line to stderr:
 * "faults: requests=N connections=N KIND=N ...".
 *
 * Per-request test controls (not in --fast), as request headers:
 *   X-Test-Delay-Ms: N        answer after N ms
 *   X-Test-Status: N          answer with status N
 *   X-Test-Response-Bytes: N  answer with N bytes of body, chunked
 *   X-Test-Close: 1           close the connection without answering
 * GET /__stats answers {"connections", "requests"} seen so far.
 *
 * The files: model_server.c the evhttp server, the listener and main;
 * model_fast.c the --fast backend and its faults; model_answer.c the
 * options and the answer both give (tools/model_server.h). Calls run
 * model_server.c -> model_fast.c -> model_answer.c.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/model_server.h"

/*
 * Per-connection state of the evhttp server, only kept with
 * --idle-close-max-ms. evhttp has no per-connection user data, so the states
 * sit in a list looked up by connection; tests open few connections.
 */
struct conn_state {
    LIST_ENTRY(conn_state) link;
    struct evhttp_connection *evcon;
    struct event *idle;
};
static LIST_HEAD(, conn_state) conn_states = LIST_HEAD_INITIALIZER(conn_states);

static void
conn_state_closed(struct evhttp_connection *evcon, void *arg)
{
    struct conn_state *st = arg;

    evhttp_connection_set_closecb(evcon, NULL, NULL);
    LIST_REMOVE(st, link);
    event_free(st->idle);
    free(st);
}

static void
conn_idle_expired(evutil_socket_t fd, short what, void *arg)
{
    struct conn_state *st = arg;

    /* The close callback frees st and its timer, which libevent allows
     * from inside the timer's own (non-persistent) callback. */
    evhttp_connection_free(st->evcon);
}

static struct conn_state *
conn_state_get(struct evhttp_connection *evcon)
{
    struct conn_state *st;

    LIST_FOREACH(st, &conn_states, link)
        if (st->evcon == evcon)
            return st;
    if ((st = calloc(1, sizeof(*st))) == NULL)
        return NULL;
    if ((st->idle = evtimer_new(base, conn_idle_expired, st)) == NULL) {
        free(st);
        return NULL;
    }
    st->evcon = evcon;
    LIST_INSERT_HEAD(&conn_states, st, link);
    evhttp_connection_set_closecb(evcon, conn_state_closed, st);
    return st;
}

/* The response went out and the connection waits for the next request:
 * arm the random close. (If the connection is closing anyway, its close
 * callback runs next and drops the timer.) */
static void
request_completed(struct evhttp_request *req, void *arg)
{
    struct conn_state *st = arg;
    struct timeval tv = idle_close_delay();

    evtimer_add(st->idle, &tv);
}





static void
delayed(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    answer(p);
    event_free(p->ev);
    free(p);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *v;

    n_reqs++;
    if (strcmp(evhttp_request_get_uri(req), "/__stats") == 0) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "{\"version\":\"%s\",\"connections\":%llu,\"requests\":%llu}\n",
                            name, n_conns, n_reqs - 1);
        n_reqs--;
        evhttp_send_reply(req, 200, NULL, b);
        evbuffer_free(b);
        return;
    }
    if ((v = evhttp_find_header(h, "X-Test-Close")) != NULL) {
        evhttp_connection_free(evhttp_request_get_connection(req));
        return;
    }
    if (idle_close_max_ms > 0) {
        struct conn_state *st = conn_state_get(evhttp_request_get_connection(req));
        if (st != NULL) {
            event_del(st->idle);
            evhttp_request_set_on_complete_cb(req, request_completed, st);
        }
    }
    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        evhttp_send_error(req, 503, "out of memory");
        return;
    }
    p->req = req;
    p->status = 200;
    if ((v = evhttp_find_header(h, "X-Test-Status")) != NULL)
        p->status = atoi(v);
    else if (error_rate > 0 && (double)random() / RAND_MAX < error_rate)
        p->status = 500;
    if ((v = evhttp_find_header(h, "X-Test-Response-Bytes")) != NULL)
        p->resp_bytes = atoll(v);
    int delay = latency_ms + (jitter_ms > 0 ? (int)(random() % (jitter_ms + 1)) : 0);
    if ((v = evhttp_find_header(h, "X-Test-Delay-Ms")) != NULL)
        delay = atoi(v);
    if (delay <= 0) {
        answer(p);
        free(p);
        return;
    }
    if ((p->ev = evtimer_new(base, delayed, p)) == NULL) {
        answer(p);
        free(p);
        return;
    }
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(p->ev, &tv);
}

static struct bufferevent *
on_connection(struct event_base *b, void *arg)
{
    n_conns++;
    return bufferevent_socket_new(b, -1, BEV_OPT_CLOSE_ON_FREE);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(base, NULL);
}

/* A listening socket for "HOST:PORT" or "unix:/path"; -1 with a message. */
static int
listen_on(const char *addr)
{
    int fd, one = 1;

    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", addr + 5);
        unlink(sun.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 4096) < 0)
            goto fail;
        return fd;
    }
    char host[256];
    snprintf(host, sizeof(host), "%s", addr);
    char *colon = strrchr(host, ':');
    if (colon == NULL) {
        fprintf(stderr, "sluice-model: --listen needs HOST:PORT\n");
        return -1;
    }
    *colon = '\0';
    const char *h = host;
    if (host[0] == '[' && colon > host + 1 && colon[-1] == ']') {
        colon[-1] = '\0';
        h = host + 1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    if (getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai) != 0) {
        fprintf(stderr, "sluice-model: cannot resolve %s\n", addr);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        freeaddrinfo(ai);
        goto fail;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        int port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        /* harnesses read this line to learn the port: no race for a free one */
        printf("listening on %d\n", port);
        fflush(stdout);
    }
    return fd;
fail:
    fprintf(stderr, "sluice-model: cannot listen on %s\n", addr);
    if (fd >= 0)
        close(fd);
    return -1;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"name", required_argument, NULL, 'n'},
        {"latency-ms", required_argument, NULL, 'd'},
        {"jitter-ms", required_argument, NULL, 'j'},
        {"error-rate", required_argument, NULL, 'e'},
        {"noise", required_argument, NULL, 'N'},
        {"random-field", no_argument, NULL, 'R'},
        {"idle-close-max-ms", required_argument, NULL, 'I'},
        {"fast", no_argument, NULL, 'F'},
        {"fault-rate", required_argument, NULL, 'f'},
        {"slow-max-ms", required_argument, NULL, 's'},
        {"seed", required_argument, NULL, 'S'},
        {NULL, 0, NULL, 0},
    };
    const char *listen_addr = "127.0.0.1:5001";
    int c, fast = 0;
    unsigned seed = (unsigned)getpid();

    while ((c = getopt_long(argc, argv, "l:n:d:j:e:", opts, NULL)) != -1) {
        switch (c) {
        case 'l': listen_addr = optarg; break;
        case 'n': name = optarg; break;
        case 'd': latency_ms = atoi(optarg); break;
        case 'j': jitter_ms = atoi(optarg); break;
        case 'e': error_rate = atof(optarg); break;
        case 'N': noise_eps = atof(optarg); break;
        case 'R': random_field = 1; break;
        case 'I': idle_close_max_ms = atoi(optarg); break;
        case 'F': fast = 1; break;
        case 'f': fault_rate = atof(optarg); break;
        case 's': slow_max_ms = atoi(optarg); break;
        case 'S': seed = (unsigned)strtoul(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: sluice-model [--listen HOST:PORT|unix:/path] "
                    "[--name V] [--latency-ms N] [--jitter-ms N] [--error-rate F]\n"
                    "       [--noise EPS] [--random-field] [--idle-close-max-ms N] [--fast]\n"
                    "       [--fault-rate F] [--slow-max-ms N] [--seed N]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    srandom(seed);
    base = event_base_new();
    if (base == NULL)
        return 1;
    int fd = listen_on(listen_addr);
    if (fd < 0)
        return 1;
    struct evhttp *http = NULL;
    struct evconnlistener *lev = NULL;
    if (fast) {
        fast_build_responses();
        lev = evconnlistener_new(base, fast_accept, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (lev == NULL) {
            fprintf(stderr, "sluice-model: cannot accept on %s\n", listen_addr);
            return 1;
        }
    } else {
        http = evhttp_new(base);
        if (http == NULL)
            return 1;
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                   EVHTTP_REQ_HEAD | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                                   EVHTTP_REQ_OPTIONS);
        evhttp_set_bevcb(http, on_connection, NULL);
        evhttp_set_gencb(http, on_request, NULL);
        evhttp_set_timeout(http, 120);
        if (evhttp_accept_socket(http, fd) < 0) {
            fprintf(stderr, "sluice-model: cannot accept on %s\n", listen_addr);
            return 1;
        }
    }
    struct event *st = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *si = evsignal_new(base, SIGINT, on_signal, NULL);
    event_add(st, NULL);
    event_add(si, NULL);
    fprintf(stderr, "sluice-model %s listening on %s%s\n", name, listen_addr,
            fast ? " (fast)" : "");
    event_base_dispatch(base);
    if (fast) {
        fprintf(stderr, "faults: requests=%llu connections=%llu", n_reqs, n_conns);
        for (int f = 1; f < F_COUNT; f++)
            fprintf(stderr, " %s=%llu", fault_names[f], n_faults[f]);
        fprintf(stderr, "\n");
    }
    event_free(st);
    event_free(si);
    if (http != NULL)
        evhttp_free(http);
    if (lev != NULL)
        evconnlistener_free(lev);
    event_base_free(base);
    return 0;
}

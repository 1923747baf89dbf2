/*
 * sluice-model: a small model server for tests, the demo and benchmarks.
 * This file holds the options, the listening socket and the main loop;
 * model.h lists the other files.
 *
 * Every port speaks HTTP/1.1 and, to a client that opens with the HTTP/2
 * preface (prior knowledge), HTTP/2: the same answers, controls and options
 * per stream, and gRPC calls of the Open Inference Protocol's
 * inference.GRPCInferenceService (grpc.c; tests/proto/grpc_service.proto).
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
 *   --error-rate F             answer 500 to a fraction F of requests (gRPC:
 *                              grpc-status 13 INTERNAL, or --grpc-status's)
 *   --grpc-status N            gRPC calls answer grpc-status N (Trailers-Only);
 *                              with --error-rate, only that share does
 *   --h2-max-streams N         HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
 *                              (default 128)
 *   --h2-goaway-after N        a graceful shutdown of each HTTP/2 connection
 *                              after N streams: when stream N+1 begins, a
 *                              GOAWAY (NO_ERROR) whose last-stream-id is
 *                              stream N's; that stream and any after it are
 *                              not processed (neither answered nor counted);
 *                              the first N are answered, then the
 *                              connection closes
 *   --h2-drop-after N          an abrupt close of each HTTP/2 connection after
 *                              N streams (0: at its first): when stream N+1
 *                              begins, the connection closes without a
 *                              GOAWAY once what is queued is sent; that
 *                              stream and any after it are not processed
 *                              (neither answered nor counted; "refused" in
 *                              /__stats)
 *   --h2-refuse-every N        an overloaded HTTP/2 server: every Nth request
 *                              stream the process begins (counted across
 *                              connections) is refused unprocessed with
 *                              RST_STREAM REFUSED_STREAM, and not counted
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
 *                              Over HTTP/2 the same fixed JSON; gRPC calls get
 *                              their full answers and honour the x-test-
 *                              headers (but no latency or error options); the
 *                              faults below are HTTP/1.1's only.
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
 *   x-test-interim: N         (HTTP/2) send an interim N (1xx) head first;
 *                             with x-test-close, the connection closes once
 *                             it is out (a server dying mid-request)
 *   x-test-grpc-status: N     (gRPC) answer grpc-status N, Trailers-Only
 *   x-test-grpc-no-trailers: 1  (gRPC) end the answer without trailers
 * Over HTTP/2 the controls are the same headers, lowercase. A gRPC call
 * that the controls or options give an HTTP error status N is answered
 * with grpc-status grpc_status_of_http(N) (503 UNAVAILABLE 14, 500
 * INTERNAL 13, 504 DEADLINE_EXCEEDED 4, 404 NOT_FOUND 5, ...).
 * GET /__stats answers {"connections", "requests", "refused"} seen so far
 * (refused: HTTP/2 streams not processed, --h2-goaway-after,
 * --h2-drop-after and --h2-refuse-every).
 */
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "model.h"



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
        {"grpc-status", required_argument, NULL, 'G'},
        {"h2-max-streams", required_argument, NULL, 'M'},
        {"h2-goaway-after", required_argument, NULL, 'g'},
        {"h2-refuse-every", required_argument, NULL, 'X'},
        {"h2-drop-after", required_argument, NULL, 'D'},
        {NULL, 0, NULL, 0},
    };
    const char *listen_addr = "127.0.0.1:5001";
    int c;
    unsigned seed = (unsigned)getpid();

    while ((c = getopt_long(argc, argv, "l:n:d:j:e:", opts, NULL)) != -1) {
        switch (c) {
        case 'l': listen_addr = optarg; break;
        case 'n': opt.name = optarg; break;
        case 'd': opt.latency_ms = atoi(optarg); break;
        case 'j': opt.jitter_ms = atoi(optarg); break;
        case 'e': opt.error_rate = atof(optarg); break;
        case 'N': opt.noise_eps = atof(optarg); break;
        case 'R': opt.random_field = 1; break;
        case 'I': opt.idle_close_max_ms = atoi(optarg); break;
        case 'F': opt.fast = 1; break;
        case 'f': opt.fault_rate = atof(optarg); break;
        case 's': opt.slow_max_ms = atoi(optarg); break;
        case 'S': seed = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'G':
            opt.grpc_status = atoi(optarg);
            if (opt.grpc_status < 0 || opt.grpc_status > 16) {
                fprintf(stderr, "sluice-model: --grpc-status needs a code 0..16\n");
                return 2;
            }
            break;
        case 'M':
            opt.h2_max_streams = (unsigned)strtoul(optarg, NULL, 10);
            if (opt.h2_max_streams == 0) {
                fprintf(stderr, "sluice-model: --h2-max-streams needs a number above 0\n");
                return 2;
            }
            break;
        case 'g':
            opt.h2_goaway_after = (unsigned)strtoul(optarg, NULL, 10);
            if (opt.h2_goaway_after == 0) {
                fprintf(stderr, "sluice-model: --h2-goaway-after needs a number above 0\n");
                return 2;
            }
            break;
        case 'D': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 0 || n > 1000000) {
                fprintf(stderr, "sluice-model: --h2-drop-after needs a number from 0\n");
                return 2;
            }
            opt.h2_drop_after = (int)n;
            break;
        }
        case 'X':
            opt.h2_refuse_every = (unsigned)strtoul(optarg, NULL, 10);
            if (opt.h2_refuse_every < 2) {
                fprintf(stderr, "sluice-model: --h2-refuse-every needs a number above 1\n");
                return 2;
            }
            break;
        default:
            fprintf(stderr, "usage: sluice-model [--listen HOST:PORT|unix:/path] "
                    "[--name V] [--latency-ms N] [--jitter-ms N] [--error-rate F]\n"
                    "       [--noise EPS] [--random-field] [--idle-close-max-ms N] [--fast]\n"
                    "       [--fault-rate F] [--slow-max-ms N] [--seed N] [--grpc-status N]\n"
                    "       [--h2-max-streams N] [--h2-goaway-after N] [--h2-refuse-every N]\n"
                    "       [--h2-drop-after N]\n");
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
    if (opt.fast)
        lev = fast_new(fd);
    else
        http = http1_new(fd);
    if (lev == NULL && http == NULL) {
        fprintf(stderr, "sluice-model: cannot accept on %s\n", listen_addr);
        return 1;
    }
    struct event *st = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *si = evsignal_new(base, SIGINT, on_signal, NULL);
    event_add(st, NULL);
    event_add(si, NULL);
    fprintf(stderr, "sluice-model %s listening on %s%s\n", opt.name, listen_addr,
            opt.fast ? " (fast)" : "");
    event_base_dispatch(base);
    if (opt.fast)
        fast_report();
    event_free(st);
    event_free(si);
    if (http != NULL)
        evhttp_free(http);
    if (lev != NULL)
        evconnlistener_free(lev);
    event_base_free(base);
    return 0;
}

/*
 * The admin listener (SPEC §5), served by libevent's evhttp on the main
 * thread, away from the data plane.
 */
#include "gateway/gateway.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>

static struct evhttp *http;
static struct config *current;      /* main thread's reference */
static bool draining;

static void
reply_json(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
reply_json(struct evhttp_request *req, int code, const char *fmt, ...)
{
    struct evbuffer *b = evbuffer_new();
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(b, fmt, ap);
    va_end(ap);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, code, NULL, b);
    evbuffer_free(b);
}

static void
on_healthz(struct evhttp_request *req, void *arg)
{
    reply_json(req, 200, "{\"status\":\"ok\"}\n");
}

static void
on_readyz(struct evhttp_request *req, void *arg)
{
    if (draining)
        reply_json(req, 503, "{\"status\":\"draining\",\"generation\":%llu}\n",
                   (unsigned long long)current->generation);
    else
        reply_json(req, 200, "{\"status\":\"ready\",\"generation\":%llu}\n",
                   (unsigned long long)current->generation);
}

static void
on_other(struct evhttp_request *req, void *arg)
{
    reply_json(req, 404, "{\"error\":{\"code\":\"not_found\",\"message\":\"no such admin resource\"}}\n");
}

int
admin_start(struct event_base *base, struct config *cfg, char *err, size_t errlen)
{
    http = evhttp_new(base);
    if (http == NULL) {
        snprintf(err, errlen, "admin: cannot create the HTTP server");
        return -1;
    }
    current = config_take(cfg);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                               EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
    evhttp_set_max_body_size(http, 1 << 20);
    evhttp_set_max_headers_size(http, 64 * 1024);
    evhttp_set_timeout(http, 30);
    evhttp_set_cb(http, "/healthz", on_healthz, NULL);
    evhttp_set_cb(http, "/readyz", on_readyz, NULL);
    evhttp_set_gencb(http, on_other, NULL);
    int fd = listen_socket(cfg->admin_host, cfg->admin_port, false, err, errlen);
    if (fd < 0)
        return -1;
    if (evhttp_accept_socket_with_handle(http, fd) == NULL) {
        snprintf(err, errlen, "admin %s: cannot accept", cfg->admin_address);
        return -1;
    }
    return 0;
}

void
admin_set_config(struct config *cfg)
{
    config_drop(current);
    current = config_take(cfg);
}

void
admin_set_draining(void)
{
    draining = true;
}

void
admin_stop(void)
{
    if (http != NULL)
        evhttp_free(http);
    http = NULL;
    config_drop(current);
    current = NULL;
}

/*
 * The unary calls of the Open Inference Protocol's gRPC service
 * (inference.GRPCInferenceService, tests/proto/grpc_service.proto), with a
 * hand-written protobuf reader and writer for the few fields they need:
 *   ServerLive, ServerReady   {live|ready: true}
 *   ModelReady                {ready: true} for any model name
 *   ServerMetadata            {name: "sluice-model", version}
 *   ModelMetadata             the request's name, versions [--name], the
 *                             "version" and "score" outputs
 *   ModelInfer                the request's model_name, model_version and
 *                             id, and two outputs: "version" (BYTES, [1]:
 *                             the --name) and "score" (FP64, [1]: a float
 *                             in [0,1) from the request message's hash,
 *                             plus --noise, as the JSON answer's "score");
 *                             its parameters echo the request's metadata
 *                             (each header a string_param under its name,
 *                             e.g. "grpc-timeout", "x-sluice-version";
 *                             with --fast only the x-test- ones)
 * Other methods answer UNIMPLEMENTED; a body that is not one uncompressed
 * length-prefixed message, or a message that does not parse, INTERNAL.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

#define SERVICE "/inference.GRPCInferenceService/"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* A string or bytes field found in a message. */
struct pb_view {
    const uint8_t *p;
    size_t len;
};

static int
pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;

    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/*
 * Walk the top-level fields of msg; each length-delimited field numbered
 * 1..nwant is stored in want[number - 1] (the last one wins, as protobuf
 * merges scalars). -1 when msg does not parse.
 */
static int
pb_fields(const uint8_t *msg, size_t len, struct pb_view *want, unsigned nwant)
{
    const uint8_t *p = msg, *end = msg + len;

    while (p < end) {
        uint64_t key, v;
        if (pb_varint(&p, end, &key) < 0 || (key >> 3) == 0)
            return -1;
        switch (key & 7) {
        case WT_VARINT:
            if (pb_varint(&p, end, &v) < 0)
                return -1;
            break;
        case WT_I64:
            if (end - p < 8)
                return -1;
            p += 8;
            break;
        case WT_I32:
            if (end - p < 4)
                return -1;
            p += 4;
            break;
        case WT_LEN:
            if (pb_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return -1;
            if ((key >> 3) <= nwant)
                want[(key >> 3) - 1] = (struct pb_view){p, (size_t)v};
            p += v;
            break;
        default:                /* groups: not in proto3 */
            return -1;
        }
    }
    return 0;
}

static void
put_varint(struct evbuffer *b, uint64_t v)
{
    uint8_t buf[10];
    size_t n = 0;

    do {
        buf[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    evbuffer_add(b, buf, n);
}

static void
put_bytes(struct evbuffer *b, unsigned field, const void *data, size_t len)
{
    put_varint(b, (uint64_t)field << 3 | WT_LEN);
    put_varint(b, len);
    evbuffer_add(b, data, len);
}

static void
put_str(struct evbuffer *b, unsigned field, const char *s)
{
    put_bytes(b, field, s, strlen(s));
}

static void
put_view(struct evbuffer *b, unsigned field, struct pb_view v)
{
    if (v.len > 0)              /* proto3: an empty string is not sent */
        put_bytes(b, field, v.p, v.len);
}

static void
put_bool(struct evbuffer *b, unsigned field, int v)
{
    put_varint(b, (uint64_t)field << 3 | WT_VARINT);
    put_varint(b, v ? 1 : 0);
}

/* A nested message: its bytes as a length-delimited field; frees sub. */
static void
put_message(struct evbuffer *b, unsigned field, struct evbuffer *sub)
{
    put_varint(b, (uint64_t)field << 3 | WT_LEN);
    put_varint(b, evbuffer_get_length(sub));
    evbuffer_add_buffer(b, sub);
    evbuffer_free(sub);
}

/* A tensor's metadata or an output tensor: name = 1, datatype = 2,
 * shape = 3 (packed int64), and for outputs contents = 5. */
static struct evbuffer *
tensor(const char *name, const char *datatype, int64_t dim, struct evbuffer *contents)
{
    struct evbuffer *t = evbuffer_new(), *shape = evbuffer_new();

    put_str(t, 1, name);
    put_str(t, 2, datatype);
    put_varint(shape, (uint64_t)dim);
    put_message(t, 3, shape);
    if (contents != NULL)
        put_message(t, 5, contents);
    return t;
}

/* parameters = 4: map<string, InferParameter>, an entry per header with
 * its value as string_param = 3. */
static void
put_headers(struct evbuffer *b, const struct kv *hdrs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct evbuffer *e = evbuffer_new(), *v = evbuffer_new();
        put_str(v, 3, hdrs[i].value);
        put_str(e, 1, hdrs[i].name);
        put_message(e, 2, v);
        put_message(b, 4, e);
    }
}

static void
model_infer(const uint8_t *msg, size_t len, const struct kv *hdrs, size_t n_hdrs,
            struct grpc_reply *r)
{
    struct pb_view f[3] = {{NULL, 0}};      /* model_name, model_version, id */

    if (pb_fields(msg, len, f, 3) < 0) {
        r->status = 13;
        snprintf(r->message, sizeof(r->message), "cannot parse the ModelInferRequest");
        return;
    }
    /* InferTensorContents: bytes_contents = 8, fp64_contents = 7 */
    struct evbuffer *vc = evbuffer_new(), *sc = evbuffer_new();
    put_str(vc, 8, opt.name);
    double score = score_of(fnv1a(FNV1A_INIT, msg, len), 0);
    uint64_t bits;
    uint8_t le[8];
    memcpy(&bits, &score, sizeof(bits));
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(bits >> (8 * i));
    put_bytes(sc, 7, le, sizeof(le));
    put_view(r->msg, 1, f[0]);
    put_view(r->msg, 2, f[1]);
    put_view(r->msg, 3, f[2]);
    put_headers(r->msg, hdrs, n_hdrs);
    put_message(r->msg, 5, tensor("version", "BYTES", 1, vc));
    put_message(r->msg, 5, tensor("score", "FP64", 1, sc));
}

static void
model_metadata(const uint8_t *msg, size_t len, struct grpc_reply *r)
{
    struct pb_view f[1] = {{NULL, 0}};      /* name */

    if (pb_fields(msg, len, f, 1) < 0) {
        r->status = 13;
        snprintf(r->message, sizeof(r->message), "cannot parse the ModelMetadataRequest");
        return;
    }
    put_view(r->msg, 1, f[0]);
    put_str(r->msg, 2, opt.name);
    put_str(r->msg, 3, "sluice-model");
    put_message(r->msg, 4, tensor("input", "BYTES", -1, NULL));
    put_message(r->msg, 5, tensor("version", "BYTES", 1, NULL));
    put_message(r->msg, 5, tensor("score", "FP64", 1, NULL));
}

void
grpc_call(const char *path, const uint8_t *body, size_t len, const struct kv *hdrs,
          size_t n_hdrs, struct grpc_reply *r)
{
    static const char *const trues[] = {"ServerLive", "ServerReady", "ModelReady"};
    const char *method;

    r->status = 0;
    r->message[0] = '\0';
    if (len < 5 || body[0] != 0 ||
        ((size_t)body[1] << 24 | (size_t)body[2] << 16 | (size_t)body[3] << 8 | body[4]) !=
        len - 5) {
        r->status = 13;
        snprintf(r->message, sizeof(r->message), "%s",
                 len >= 5 && body[0] != 0 ? "compressed messages are not supported"
                                          : "not one length-prefixed message");
        return;
    }
    body += 5;
    len -= 5;
    if (strncmp(path, SERVICE, strlen(SERVICE)) != 0)
        goto unimplemented;
    method = path + strlen(SERVICE);
    for (size_t i = 0; i < sizeof(trues) / sizeof(trues[0]); i++)
        if (strcmp(method, trues[i]) == 0) {
            put_bool(r->msg, 1, 1);
            return;
        }
    if (strcmp(method, "ModelInfer") == 0) {
        model_infer(body, len, hdrs, n_hdrs, r);
        return;
    }
    if (strcmp(method, "ModelMetadata") == 0) {
        model_metadata(body, len, r);
        return;
    }
    if (strcmp(method, "ServerMetadata") == 0) {
        put_str(r->msg, 1, "sluice-model");
        put_str(r->msg, 2, SLUICE_VERSION);
        return;
    }
unimplemented:
    r->status = 12;
    snprintf(r->message, sizeof(r->message), "unknown method %.100s", path);
}

/* As the SPEC's gateway maps its own errors (and Envoy the other way). */
int
grpc_status_of_http(int status)
{
    if (status >= 200 && status < 300)
        return 0;
    switch (status) {
    case 400: return 3;         /* INVALID_ARGUMENT */
    case 401: return 16;        /* UNAUTHENTICATED */
    case 403: return 7;         /* PERMISSION_DENIED */
    case 404: return 5;         /* NOT_FOUND */
    case 413: case 429: return 8;   /* RESOURCE_EXHAUSTED */
    case 499: return 1;         /* CANCELLED */
    case 500: return 13;        /* INTERNAL */
    case 501: return 12;        /* UNIMPLEMENTED */
    case 502: case 503: return 14;  /* UNAVAILABLE */
    case 504: return 4;         /* DEADLINE_EXCEEDED */
    default: return 2;          /* UNKNOWN */
    }
}

const char *
grpc_status_name(int status)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    return status >= 0 && status <= 16 ? names[status] : "UNKNOWN";
}

#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts Redis, two model
# versions, a shadow version (a mirror whose scores differ a little) and
# sluice with TLS, sends 1,000 scoring requests, prints the observed split
# and the shadow version's agreement, then stops everything it started.
source "$(dirname "$0")/common.sh"
cd "$ROOT"

ensure_packages $DEPS_BUILD $DEPS_RUN
echo "== building"
build build

RUN=$(mktemp -d /tmp/sluice-demo.XXXXXX)
trap 'stop_all; rm -rf "$RUN"' EXIT

REDIS_PORT=$(free_port); PA=$(free_port); PB=$(free_port); PC=$(free_port)
HTTPS_PORT=$(free_port); ADMIN_PORT=$(free_port)

echo "== starting redis-server on 127.0.0.1:$REDIS_PORT"
spawn "$RUN/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
echo "== starting model servers: versiona (control) on :$PA, versionb (treatment) on :$PB"
spawn "$RUN/versiona.log" build/tools/sluice-model --listen "127.0.0.1:$PA" --name versiona --latency-ms 2 --jitter-ms 3
spawn "$RUN/versionb.log" build/tools/sluice-model --listen "127.0.0.1:$PB" --name versionb --latency-ms 4 --jitter-ms 4 --error-rate 0.02
echo "== starting the shadow model versionc on :$PC: scores off by up to 1.03e-4, 1 % errors"
# Its four scores each differ from the live ones by up to 1.03e-4, so about
# 89 % of its answers are within compare.abs_tol (1e-4) and the rest differ;
# its errors (and versionb's) show as status mismatches.
spawn "$RUN/versionc.log" build/tools/sluice-model --listen "127.0.0.1:$PC" --name versionc --latency-ms 3 --noise 0.000103 --error-rate 0.01

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$RUN/key.pem" -out "$RUN/cert.pem" -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

cat >"$RUN/sluice.json" <<JSON
{
  "workers": 2,
  "listeners": [{"address": "127.0.0.1:$HTTPS_PORT",
                 "tls": {"certificate": "cert.pem", "private_key": "key.pem"}}],
  "admin": {"address": "127.0.0.1:$ADMIN_PORT", "token": "demo-admin-token"},
  "redis": {"address": "127.0.0.1:$REDIS_PORT", "flush_interval_ms": 500},
  "log": {"access_log": "access.log"},
  "endpoints": [{
    "name": "mynewendpoint",
    "versions": [
      {"name": "versiona", "upstreams": ["127.0.0.1:$PA"], "traffic_percentile": 20,
       "is_default": true, "type": "control", "description": "current model"},
      {"name": "versionb", "upstreams": ["127.0.0.1:$PB"], "traffic_percentile": 10,
       "type": "treatment", "description": "candidate model"},
      {"name": "versionc", "upstreams": ["127.0.0.1:$PC"], "traffic_percentile": 0,
       "mirror_percentile": 50, "description": "shadow: the next model, compared",
       "compare": {"mode": "json", "abs_tol": 0.0001, "ignore": ["version", "headers"],
                   "samples": 5}}
    ]
  }]
}
JSON
echo "== config: versiona 20 % (default, control), versionb 10 % (treatment): effective 90 / 10"
build/control/sluice -c "$RUN/sluice.json" --check
spawn "$RUN/sluice.log" build/control/sluice -c "$RUN/sluice.json"
wait_port "$REDIS_PORT"; wait_port "$PA"; wait_port "$PB"; wait_port "$PC"; wait_port "$HTTPS_PORT"

export SLUICE_ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" SLUICE_ADMIN_TOKEN=demo-admin-token
echo "== the endpoint, as sluicectl shows it (keys were generated and saved to the config)"
build/tools/sluicectl show mynewendpoint
KEY=$(build/tools/sluicectl --json keys mynewendpoint | $PY -c 'import json,sys; print(json.load(sys.stdin)["primary_key"])')
echo "== sending 1,000 scoring requests over TLS to https://127.0.0.1:$HTTPS_PORT/api/v1/service/mynewendpoint/score"
$PY tools/demo_client.py --url "https://127.0.0.1:$HTTPS_PORT/api/v1/service/mynewendpoint/score" \
    --cacert "$RUN/cert.pem" --key "$KEY" --requests 1000 --expect versiona=90,versionb=10
sleep 1
echo "== what Redis holds: sluice:{mynewendpoint}:total:* (requests per version)"
for v in versiona versionb; do
    printf '%-10s %s\n' "$v" "$(redis-cli -p "$REDIS_PORT" hget "sluice:{mynewendpoint}:total:$v" requests)"
done
echo "== control vs treatment (sluicectl metrics mynewendpoint)"
build/tools/sluicectl metrics mynewendpoint --minutes 5
echo "== the shadow version versionc: does it answer like the live versions? (sluicectl shadow)"
build/tools/sluicectl shadow mynewendpoint --minutes 5
if [ "${DEMO_ROLLOUT:-0}" = "1" ]; then
    # SPEC §8: two short rollouts with 3-second steps, judged against the
    # control versiona over each step's window, under steady traffic.
    PD=$(free_port); PE=$(free_port)
    echo "== rollout demo: versiond (a good model) on :$PD, versione (20 % errors) on :$PE"
    spawn "$RUN/versiond.log" build/tools/sluice-model --listen "127.0.0.1:$PD" --name versiond --latency-ms 2 --jitter-ms 3
    spawn "$RUN/versione.log" build/tools/sluice-model --listen "127.0.0.1:$PE" --name versione --latency-ms 2 --jitter-ms 3 --error-rate 0.2
    wait_port "$PD"; wait_port "$PE"
    PLAN='{"steps": [10, 25, 50], "step_s": 3, "promote": true,
           "gate": {"min_requests": 100, "max_error_rate_increase": 0.02, "max_p99_ratio": 3.0}}'
    for v in versione:$PE versiond:$PD; do
        name=${v%%:*}; port=${v##*:}
        curl -sf -o /dev/null -H "Authorization: Bearer demo-admin-token" \
            -H "Content-Type: application/json" \
            -d "{\"name\": \"$name\", \"upstreams\": [\"127.0.0.1:$port\"], \"traffic_percentile\": 0,
                 \"type\": \"treatment\", \"rollout\": $PLAN}" \
            "$SLUICE_ADMIN_URL/admin/v1/endpoints/mynewendpoint/versions"
        echo "== rollout of $name: steps 10 %, 25 %, 50 % of 3 s each, then promote"
        $PY tools/demo_rollout.py --url "https://127.0.0.1:$HTTPS_PORT/api/v1/service/mynewendpoint/score" \
            --cacert "$RUN/cert.pem" --key "$KEY" --admin "$SLUICE_ADMIN_URL" \
            --token demo-admin-token --endpoint mynewendpoint --version "$name"
        build/tools/sluicectl rollout mynewendpoint "$name" status
    done
    echo "== the endpoint after both rollouts"
    build/tools/sluicectl show mynewendpoint
fi
echo "== dashboard: http://127.0.0.1:$ADMIN_PORT/dashboard (admin token: demo-admin-token)"
if [ "${DEMO_KEEP:-0}" = "1" ]; then
    echo "   DEMO_KEEP=1: everything keeps running; press Ctrl-C to stop"
    trap 'stop_all; rm -rf "$RUN"; exit 0' INT
    while true; do sleep 3600; done
fi
echo "== the gateway's event log"
cat "$RUN/sluice.log" | head -n 5
echo "== stopping"

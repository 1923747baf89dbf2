#!/bin/sh
set -eu
me="$(hostname).redis-sentinel"
primary=""
for i in 0 1 2; do
  [ "redis-sentinel-$i.redis-sentinel" = "$me" ] && continue
  ans=$(redis-cli -h "redis-sentinel-$i.redis-sentinel" -p 26379 --raw \
        sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1) || true
  if [ -n "$ans" ]; then primary=$ans; break; fi
done
[ -n "$primary" ] || primary="redis-0.redis"
conf="${REDIS_RUN_DIR:-/run/sentinel}/sentinel.conf"
{
  echo "port 26379"
  echo "dir ${REDIS_RUN_DIR:-/run/sentinel}"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $me"
  echo "sentinel monitor mymaster $primary 6379 2"
  echo "sentinel auth-pass mymaster $REDIS_PASSWORD"
  echo "sentinel down-after-milliseconds mymaster 5000"
  echo "sentinel failover-timeout mymaster 60000"
  echo "sentinel parallel-syncs mymaster 1"
} > "$conf"
exec redis-server "$conf" --sentinel

#!/bin/sh
set -eu
me="$(hostname).redis"
primary=""
for i in 0 1 2; do
  ans=$(redis-cli -h "redis-sentinel-$i.redis-sentinel" -p 26379 --raw \
        sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1) || true
  if [ -n "$ans" ]; then primary=$ans; break; fi
done
if [ -z "$primary" ] && [ "$(hostname)" != "redis-0" ]; then primary="redis-0.redis"; fi
conf="${REDIS_RUN_DIR:-/run/redis}/redis.conf"
{
  echo "include /etc/redis-scripts/redis.conf"
  echo "replica-announce-ip $me"
  echo "requirepass $REDIS_PASSWORD"
  echo "masterauth $REDIS_PASSWORD"
  if [ -n "$primary" ] && [ "$primary" != "$me" ]; then echo "replicaof $primary 6379"; fi
} > "$conf"
exec redis-server "$conf"

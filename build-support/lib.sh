# Shared provisioning for build-support/run, build-support/test and
# build-support/bench. Source it; it defines functions and exports nothing
# until they are called.
#
# Embedded defaults, so that a fresh machine needs nothing running:
#   PostgreSQL  DATABASE_URL if it answers (database created if absent); otherwise a
#               private cluster under the cache directory, if initdb/pg_ctl exist.
#   Kafka       KAFKA_BOOTSTRAP_SERVERS if it answers; otherwise tansu (a Kafka-protocol
#               broker) installed into the cache directory and started on 127.0.0.1:9092.
# The cache directory is ${FOODORDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/foodorder}.

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${FOODORDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/foodorder}"
TANSU_VERSION="0.6.0"
TANSU_ROOT="$CACHE_DIR/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/foodorder"
DEFAULT_KAFKA="127.0.0.1:9092"

# Things this script started and must stop: "name pid" lines.
STARTED_PIDS=()

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: true if something accepts TCP connections there.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# wait_for_port HOST PORT SECONDS WHAT
wait_for_port() {
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# free_port: an unused TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# url_part URL FIELD (host|port|db|base): pieces of a postgres:// URL.
url_part() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
field = sys.argv[2]
if field == "host": print(url.hostname or "127.0.0.1")
elif field == "port": print(url.port or 5432)
elif field == "db": print(url.path.lstrip("/") or "postgres")
elif field == "base": print(urllib.parse.urlunsplit((url.scheme, url.netloc, "/postgres", url.query, "")))
PY
}

find_pg_bin() {
  local name=$1 candidate
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for candidate in /usr/lib/postgresql/*/bin/"$name" /usr/local/pgsql/bin/"$name"; do
    [[ -x $candidate ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

# Runs a command as the postgres OS user when we are root (initdb refuses root).
as_pg_user() {
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to own a private cluster"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_private_postgres() {
  local initdb pg_ctl data port
  initdb=$(find_pg_bin initdb) && pg_ctl=$(find_pg_bin pg_ctl) || die "PostgreSQL is not reachable at $(url_part "$DATABASE_URL" host):$(url_part "$DATABASE_URL" port) and its server binaries (initdb, pg_ctl) are not installed.
Install them (Debian/Ubuntu: apt-get install postgresql) or point DATABASE_URL at a running server."
  data="$CACHE_DIR/pgdata"
  # As root the cluster runs as the postgres user, which cannot reach a home
  # directory that is private to root: keep it in /var/tmp instead.
  [[ $(id -u) -eq 0 ]] && data="${FOODORDER_PGDATA:-/var/tmp/foodorder/pgdata}"
  mkdir -p "$CACHE_DIR" "$(dirname "$data")"
  if [[ ! -f $data/PG_VERSION ]]; then
    log "creating a private PostgreSQL cluster in $data"
    mkdir -p "$data"
    [[ $(id -u) -eq 0 ]] && chown postgres "$data"
    as_pg_user "$initdb" -D "$data" -U postgres --auth=trust >"$CACHE_DIR/initdb.log" 2>&1 \
      || { rm -rf "$data"; die "initdb failed, see $CACHE_DIR/initdb.log"; }
  fi
  # A cluster already running on this data directory (an earlier run) is reused, not stopped by us.
  if as_pg_user "$pg_ctl" -D "$data" status >/dev/null 2>&1; then
    port=$(sed -n 4p "$data/postmaster.pid")
    log "reusing the private PostgreSQL cluster already running on 127.0.0.1:$port"
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/$(url_part "$DATABASE_URL" db)"
    return 0
  fi
  port=$(free_port)
  log "starting the private PostgreSQL cluster on 127.0.0.1:$port"
  as_pg_user "$pg_ctl" -D "$data" -w -t 60 -l "$data/server.log" \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$data -c max_connections=300" start >/dev/null \
    || die "the private PostgreSQL cluster did not start, see $data/server.log"
  PRIVATE_PG_CTL="$pg_ctl"
  PRIVATE_PG_DATA="$data"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/$(url_part "$DATABASE_URL" db)"
}

stop_private_postgres() {
  if [[ -n ${PRIVATE_PG_DATA:-} ]]; then
    as_pg_user "$PRIVATE_PG_CTL" -D "$PRIVATE_PG_DATA" -m fast stop >/dev/null 2>&1 || true
  fi
}

# ensure_postgres: DATABASE_URL reachable and its database present.
ensure_postgres() {
  export DATABASE_URL="${DATABASE_URL:-$DEFAULT_DATABASE_URL}"
  if ! port_open "$(url_part "$DATABASE_URL" host)" "$(url_part "$DATABASE_URL" port)"; then
    start_private_postgres
  fi
  local db base
  db=$(url_part "$DATABASE_URL" db)
  base=$(url_part "$DATABASE_URL" base)
  command -v psql >/dev/null 2>&1 || die "psql is not installed (Debian/Ubuntu: apt-get install postgresql-client)"
  if ! psql "$base" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" 2>/dev/null | grep -q 1; then
    log "creating database $db"
    psql "$base" -qc "CREATE DATABASE \"$db\"" >/dev/null 2>&1 \
      || psql "$base" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || die "cannot create database $db at $base"
  fi
  log "PostgreSQL: $(url_part "$DATABASE_URL" host):$(url_part "$DATABASE_URL" port)/$db"
}

# install_tansu: builds tansu into the cache directory once (about 15 minutes on 2 cores).
install_tansu() {
  [[ -x $TANSU_BIN ]] && return 0
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to install the tansu broker"
  log "installing tansu $TANSU_VERSION into $TANSU_ROOT (first time only; about 15 minutes on 2 cores)"
  mkdir -p "$CACHE_DIR"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,postgres \
    --root "$TANSU_ROOT" --target-dir "$CACHE_DIR/tansu-build" >"$CACHE_DIR/tansu-install.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/tansu-install.log" >&2; die "tansu install failed, see $CACHE_DIR/tansu-install.log"; }
  rm -rf "$CACHE_DIR/tansu-build"
}

# start_tansu PORT LOGFILE: starts a broker with in-memory storage; prints its pid.
start_tansu() {
  local port=$1 logfile=$2
  (
    cd "$CACHE_DIR" # tansu reads a .env in its working directory
    exec env -u OTEL_EXPORTER_OTLP_ENDPOINT -u STORAGE_ENGINE -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL \
      "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "${TANSU_STORAGE_ENGINE:-memory://tansu/}" --silent >"$logfile" 2>&1
  ) &
  echo $!
}

# ensure_kafka [STATE_DIR]: KAFKA_BOOTSTRAP_SERVERS reachable, starting tansu if needed.
ensure_kafka() {
  local state_dir=${1:-$CACHE_DIR}
  export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-$DEFAULT_KAFKA}"
  local first=${KAFKA_BOOTSTRAP_SERVERS%%,*}
  local host=${first%:*} port=${first##*:}
  if port_open "$host" "$port"; then
    log "Kafka: $KAFKA_BOOTSTRAP_SERVERS"
    return 0
  fi
  [[ $host == 127.0.0.1 || $host == localhost ]] || die "Kafka is not reachable at $first and tansu can only be started locally"
  install_tansu
  mkdir -p "$state_dir"
  log "starting tansu on 127.0.0.1:$port (in-memory storage)"
  local pid
  pid=$(start_tansu "$port" "$state_dir/tansu.log")
  echo "$pid" >"$state_dir/tansu.pid"
  STARTED_PIDS+=("tansu $pid")
  wait_for_port 127.0.0.1 "$port" 30 || die "tansu did not start, see $state_dir/tansu.log"
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
  log "Kafka: $KAFKA_BOOTSTRAP_SERVERS (tansu)"
}

# stop_started: stops what this script started, newest first.
stop_started() {
  local index entry pid
  for ((index = ${#STARTED_PIDS[@]} - 1; index >= 0; index--)); do
    entry=${STARTED_PIDS[$index]}
    pid=${entry##* }
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
  stop_private_postgres
}

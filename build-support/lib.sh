# Shared provisioning for build-support/run, build-support/test and
# build-support/bench. Source it; it defines functions and exports nothing
# until they are called.
#
# Embedded defaults, so that a fresh machine needs nothing running:
#   PostgreSQL  DATABASE_URL if it answers (database created if absent); otherwise a
#               private cluster from the installed server binaries; otherwise, as root
#               with apt, Debian's postgresql package is installed first.
#   Kafka       KAFKA_BOOTSTRAP_SERVERS if it answers; otherwise Apache Kafka (KRaft,
#               single node), its jars fetched from Maven Central by Maven into the
#               cache directory once (build-support/kafka/pom.xml), run with Java 17.
#   Jaeger      OTEL_EXPORTER_OTLP_ENDPOINT if set; otherwise Jaeger built with the Go
#               toolchain into the cache directory once, run with in-memory storage.
# The cache directory is ${FOODORDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/foodorder}.

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${FOODORDER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/foodorder}"
# The broker version lives in one place, the pom (docker-compose.yml pins the same image tag).
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT_DIR/build-support/kafka/pom.xml")"
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_BROKER="$ROOT_DIR/build-support/kafka/broker"
JAEGER_VERSION="v1.75.0"
JAEGER_BIN="$CACHE_DIR/jaeger-$JAEGER_VERSION/jaeger"
JAEGER_CONFIG="$ROOT_DIR/build-support/jaeger/config.yaml"
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

# http_ok HOST:PORT PATH: GET PATH answers 200. The probe runs in a subshell: a
# peer that closes early makes the write raise SIGPIPE, which must end the probe
# (not ready yet), not the calling script.
http_ok() {
  local host=${1%:*} port=${1##*:} path=$2
  [[ $host == 0.0.0.0 ]] && host=127.0.0.1
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
    read -r -t 2 _ status _ <&3 || exit 1
    [[ $status == 200 ]]
  ) 2>/dev/null
}

# http_ready HOST:PORT: GET /readyz answers 200 (dependencies answer; a consumer holds its assignment).
http_ready() { http_ok "$1" /readyz; }

# stop_pid PID [SECONDS]: TERM the process, wait up to SECONDS (default 10) for
# it to exit, then KILL. Returns 1 when there was no such process to signal.
stop_pid() {
  local pid=$1 tenths=$((${2:-10} * 10))
  kill -TERM "$pid" 2>/dev/null || return 1
  while ((tenths-- > 0)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
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

# install_postgres_server: Debian's postgresql package, installed non-interactively when
# running as root with apt. No "main" cluster is created or started: the scripts run
# a private cluster of their own.
install_postgres_server() {
  local where="PostgreSQL is not reachable at $(url_part "$DATABASE_URL" host):$(url_part "$DATABASE_URL" port) and its server binaries (initdb, pg_ctl) are not installed"
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
    || die "$where.
Install them (Debian/Ubuntu: apt-get install postgresql) or point DATABASE_URL at a running server."
  log "installing Debian's postgresql package (apt-get; first time only)"
  mkdir -p /etc/postgresql-common "$CACHE_DIR"
  [[ -f /etc/postgresql-common/createcluster.conf ]] || echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
  apt_install "$CACHE_DIR/postgresql-install.log" postgresql postgresql-client \
    || { tail -20 "$CACHE_DIR/postgresql-install.log" >&2; die "$where, and installing Debian's postgresql package failed (see $CACHE_DIR/postgresql-install.log)"; }
}

start_private_postgres() {
  local initdb pg_ctl data port
  if ! find_pg_bin initdb >/dev/null || ! find_pg_bin pg_ctl >/dev/null; then
    install_postgres_server
  fi
  initdb=$(find_pg_bin initdb) && pg_ctl=$(find_pg_bin pg_ctl) || die "the postgresql package is installed but initdb/pg_ctl were not found"
  data="${FOODORDER_PGDATA:-$CACHE_DIR/pgdata}"
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
  pg_start_cluster "$pg_ctl" "$data" "$port" || die "the private PostgreSQL cluster did not start, see $data/server.log"
  PRIVATE_PG_CTL="$pg_ctl"
  PRIVATE_PG_DATA="$data"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/$(url_part "$DATABASE_URL" db)"
}

# pg_start_cluster PG_CTL DATA PORT: starts the cluster on 127.0.0.1:PORT and waits for it.
pg_start_cluster() {
  as_pg_user "$1" -D "$2" -w -t 60 -l "$2/server.log" \
    -o "-p $3 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$2 -c max_connections=300" start >/dev/null
}

# restart_private_postgres: an abrupt restart of the private cluster this script
# started (immediate shutdown: no checkpoint, crash recovery at the start), on the same port.
restart_private_postgres() {
  [[ -n ${PRIVATE_PG_DATA:-} ]] || die "no private PostgreSQL cluster was started by this script"
  local port
  port=$(sed -n 4p "$PRIVATE_PG_DATA/postmaster.pid")
  as_pg_user "$PRIVATE_PG_CTL" -D "$PRIVATE_PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  sleep "${1:-2}"
  pg_start_cluster "$PRIVATE_PG_CTL" "$PRIVATE_PG_DATA" "$port"
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

# java_major: the major version of the java on PATH (0 when there is none).
java_major() {
  local major
  command -v java >/dev/null 2>&1 && major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  echo "${major:-0}"
}

# install_kafka: copies the broker's jars from Maven Central into the cache directory, once.
install_kafka() {
  [[ -f $KAFKA_LIBS/.installed ]] && return 0
  (($(java_major) >= 17)) || die "the embedded Kafka broker needs Java 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless), or point KAFKA_BOOTSTRAP_SERVERS at a running broker"
  command -v mvn >/dev/null 2>&1 || die "the embedded Kafka broker's jars are fetched with Maven, which is not installed (Debian/Ubuntu: apt-get install maven), or point KAFKA_BOOTSTRAP_SERVERS at a running broker"
  log "installing Apache Kafka $KAFKA_VERSION into $KAFKA_LIBS (first time only; jars from Maven Central)"
  local staging="$KAFKA_LIBS.partial"
  rm -rf "$staging"
  mkdir -p "$staging"
  mvn -q -B -f "$ROOT_DIR/build-support/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$staging" >"$CACHE_DIR/kafka-install.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/kafka-install.log" >&2; die "fetching the Kafka jars failed, see $CACHE_DIR/kafka-install.log"; }
  ls "$staging"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "Maven did not deliver kafka_2.13-$KAFKA_VERSION.jar"
  echo "$KAFKA_VERSION" >"$staging/.installed"
  rm -rf "$KAFKA_LIBS"
  mv "$staging" "$KAFKA_LIBS"
}

# install_kafka_unless_external: installs the broker's jars unless KAFKA_BOOTSTRAP_SERVERS answers.
install_kafka_unless_external() {
  local first=${KAFKA_BOOTSTRAP_SERVERS:-$DEFAULT_KAFKA}
  first=${first%%,*}
  port_open "${first%:*}" "${first##*:}" || install_kafka
}

# start_kafka PORT DATA_DIR: starts the broker in the background on 127.0.0.1:PORT
# (controller on PORT+1 when free) with its durable data in DATA_DIR; prints its pid.
start_kafka() {
  local port=$1 data=$2 controller_port=$(($1 + 1))
  port_open 127.0.0.1 "$controller_port" && controller_port=$(free_port)
  mkdir -p "$data"
  # nohup: a closed terminal must not stop the broker under a detached platform.
  nohup "$KAFKA_BROKER" --libs "$KAFKA_LIBS" --data "$data" --port "$port" --controller-port "$controller_port" \
    >"$data/broker.out" 2>&1 &
  echo $!
}

# boot_kafka PORT DATA [--same-port]: starts the broker and waits until it answers
# ApiVersions; sets KAFKA_PID and KAFKA_PORT. A broker that exits while starting
# (most often because another socket took one of its ports in the meantime) has
# the tail of its logs printed and is started again, up to three tries: on new
# ports, or with --same-port (a restart whose clients already know the port) on
# the same port after a pause.
boot_kafka() {
  local port=$1 data=$2 same=${3:-} try deadline
  for try in 1 2 3; do
    KAFKA_PID=$(start_kafka "$port" "$data")
    deadline=$((SECONDS + 90))
    until kafka_ready 127.0.0.1 "$port"; do
      if ! kill -0 "$KAFKA_PID" 2>/dev/null; then
        printf 'warning: the Kafka broker on 127.0.0.1:%s exited while starting (try %s of 3); the end of its logs:\n' "$port" "$try" >&2
        tail -n 20 "$data/broker.out" "$data/logs/server.log" >&2 2>/dev/null || true
        KAFKA_PID=""
        break
      fi
      if ((SECONDS >= deadline)); then
        stop_pid "$KAFKA_PID" || true
        die "the Kafka broker did not answer within 90 s, see $data/logs/server.log"
      fi
      sleep 0.3
    done
    if [[ -n $KAFKA_PID ]]; then
      KAFKA_PORT=$port
      return 0
    fi
    if [[ $same == --same-port ]]; then sleep 3; else port=$(free_port); fi
  done
  die "the Kafka broker would not start, see $data/logs/server.log"
}

# kafka_ready HOST PORT: the broker answers an ApiVersions request (not just a TCP connect).
kafka_ready() {
  python3 - "$1" "$2" <<'PY'
import socket, struct, sys
# ApiVersions v0 request: the smallest request every Kafka broker answers.
client = b"lib.sh"
body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", s.recv(4))[0]
        data = b""
        while len(data) < size:
            chunk = s.recv(size - len(data))
            if not chunk: sys.exit(1)
            data += chunk
        sys.exit(0 if struct.unpack(">h", data[4:6])[0] == 0 else 1)
except Exception:
    sys.exit(1)
PY
}

# ensure_kafka [STATE_DIR [fresh]]: KAFKA_BOOTSTRAP_SERVERS reachable, starting the
# embedded broker if needed, with its data in STATE_DIR/kafka (kept across restarts,
# wiped first when the second argument is "fresh").
ensure_kafka() {
  local state_dir=${1:-$CACHE_DIR} fresh=${2:-}
  export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-$DEFAULT_KAFKA}"
  local first=${KAFKA_BOOTSTRAP_SERVERS%%,*}
  local host=${first%:*} port=${first##*:}
  if port_open "$host" "$port"; then
    kafka_ready "$host" "$port" || die "something listens on $first but does not answer as a Kafka broker"
    log "Kafka: $KAFKA_BOOTSTRAP_SERVERS"
    return 0
  fi
  [[ $host == 127.0.0.1 || $host == localhost ]] || die "Kafka is not reachable at $first and the embedded broker can only be started locally"
  install_kafka
  [[ $fresh == fresh ]] && rm -rf "$state_dir/kafka"
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (data: $state_dir/kafka, log: $state_dir/kafka/logs/server.log)"
  boot_kafka "$port" "$state_dir/kafka" --same-port
  echo "$KAFKA_PID" >"$state_dir/kafka.pid"
  STARTED_PIDS+=("kafka $KAFKA_PID")
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
  log "Kafka: $KAFKA_BOOTSTRAP_SERVERS (Apache Kafka $KAFKA_VERSION)"
}

# install_jaeger: builds Jaeger with the Go toolchain into the cache directory, once.
# `go install module@version` refuses modules whose go.mod has replace directives
# (Jaeger's has one), so the module is downloaded and built as the main module.
install_jaeger() {
  [[ -x $JAEGER_BIN ]] && return 0
  command -v go >/dev/null 2>&1 || die "Jaeger is built with the Go toolchain (1.24.6 or newer, from https://go.dev/dl; Debian 12's golang-go is too old), which is not installed; or set FOODORDER_JAEGER=off"
  log "installing Jaeger $JAEGER_VERSION into $(dirname "$JAEGER_BIN") (first time only; built from the Go module proxy)"
  local source build="$CACHE_DIR/jaeger-build"
  mkdir -p "$CACHE_DIR"
  source=$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" 2>"$CACHE_DIR/jaeger-install.log" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || { cat "$CACHE_DIR/jaeger-install.log" >&2; die "downloading Jaeger failed, see $CACHE_DIR/jaeger-install.log"; }
  rm -rf "$build"
  cp -r "$source" "$build"
  chmod -R u+w "$build"
  (cd "$build" && go build -trimpath -o "$JAEGER_BIN.partial" ./cmd/jaeger) >>"$CACHE_DIR/jaeger-install.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/jaeger-install.log" >&2; rm -rf "$build"; die "building Jaeger failed, see $CACHE_DIR/jaeger-install.log"; }
  mv "$JAEGER_BIN.partial" "$JAEGER_BIN"
  rm -rf "$build"
}

# jaeger_enabled: false when FOODORDER_JAEGER is off/0/false/no.
jaeger_enabled() {
  case "${FOODORDER_JAEGER:-on}" in off | 0 | false | no) return 1 ;; *) return 0 ;; esac
}

# ensure_jaeger STATE_DIR: points the services' OTEL_EXPORTER_OTLP_ENDPOINT at a Jaeger.
# An endpoint already set is used as it is; otherwise the embedded Jaeger is started
# (OTLP gRPC on JAEGER_OTLP_PORT, default 4317; query API and UI on JAEGER_QUERY_PORT,
# default 16686). Sets JAEGER_QUERY_URL when the query API is known.
ensure_jaeger() {
  local state_dir=$1
  jaeger_enabled || { log "Jaeger: off (FOODORDER_JAEGER=${FOODORDER_JAEGER})"; return 0; }
  if [[ -n ${OTEL_EXPORTER_OTLP_ENDPOINT:-} ]]; then
    log "traces: exported to $OTEL_EXPORTER_OTLP_ENDPOINT"
    return 0
  fi
  local otlp_port=${JAEGER_OTLP_PORT:-4317} query_port=${JAEGER_QUERY_PORT:-16686}
  if port_open 127.0.0.1 "$otlp_port"; then
    log "traces: exported to the OTLP receiver already listening on 127.0.0.1:$otlp_port"
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
    port_open 127.0.0.1 "$query_port" && export JAEGER_QUERY_URL="http://127.0.0.1:$query_port"
    return 0
  fi
  install_jaeger
  mkdir -p "$state_dir"
  log "starting Jaeger on 127.0.0.1:$query_port (OTLP 127.0.0.1:$otlp_port, in-memory storage)"
  JAEGER_OTLP_PORT=$otlp_port JAEGER_QUERY_PORT=$query_port \
    JAEGER_OTLP_HTTP_PORT=${JAEGER_OTLP_HTTP_PORT:-4318} JAEGER_QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-16685} \
    JAEGER_HEALTH_PORT=${JAEGER_HEALTH_PORT:-13133} \
    nohup "$JAEGER_BIN" --config "$JAEGER_CONFIG" >"$state_dir/jaeger.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$state_dir/jaeger.pid"
  STARTED_PIDS+=("jaeger $pid")
  wait_for_port 127.0.0.1 "$query_port" 30 && wait_for_port 127.0.0.1 "$otlp_port" 5 \
    || { tail -20 "$state_dir/jaeger.log" >&2; die "Jaeger did not start, see $state_dir/jaeger.log"; }
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
  export JAEGER_QUERY_URL="http://127.0.0.1:$query_port"
}

# apt_install LOG PACKAGE...: installs Debian packages quietly (package lists
# fetched only when apt has none yet); the output goes to LOG.
apt_install() {
  local log_file=$1
  shift
  mkdir -p "$(dirname "$log_file")"
  {
    compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null || apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
  } >"$log_file" 2>&1
}

PROMETHEUS_CONFIG_DIR="$ROOT_DIR/build-support/prometheus"

# prometheus_enabled: FOODORDER_PROMETHEUS=off runs the platform without Prometheus.
prometheus_enabled() { [[ ${FOODORDER_PROMETHEUS:-on} != off ]]; }

# install_prometheus: Debian's prometheus package (the server and promtool), when
# absent, as root with apt. Returns 1 with a message when it cannot.
install_prometheus() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    printf 'note: Prometheus is not installed and this is not root with apt; install it (Debian/Ubuntu: apt-get install prometheus) to get it\n' >&2
    return 1
  fi
  log "installing Debian's prometheus package (apt-get; first time only)"
  # The package would start a system Prometheus on 9090; we run our own. A
  # policy-rc.d that refuses service starts is put in place for the install
  # only (in a subshell whose exit trap removes it, even on Ctrl-C), unless
  # the machine already has one, which is left as it is.
  if ! (
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
      trap 'rm -f "$policy"' EXIT
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod +x "$policy"
    fi
    apt_install "$CACHE_DIR/prometheus-install.log" prometheus
  ); then
    tail -20 "$CACHE_DIR/prometheus-install.log" >&2
    printf 'note: installing Debian'"'"'s prometheus package failed (see %s)\n' "$CACHE_DIR/prometheus-install.log" >&2
    return 1
  fi
}

# ensure_prometheus STATE_DIR: starts Prometheus on 127.0.0.1:${PROMETHEUS_PORT:-9090}
# scraping the services' HTTP ports (ORDER_API_HTTP_ADDR, PAYMENT_HEALTH_ADDR,
# NOTIFICATION_HEALTH_ADDR), with the recording and alerting rules, storage in
# STATE_DIR/prometheus; exports PROMETHEUS_URL. Without Prometheus it says so and
# returns (the platform runs without it).
ensure_prometheus() {
  local state_dir=$1 port=${PROMETHEUS_PORT:-9090}
  prometheus_enabled || { log "Prometheus: off (FOODORDER_PROMETHEUS=${FOODORDER_PROMETHEUS})"; return 0; }
  install_prometheus || { log "Prometheus: not started (see the note above)"; return 0; }
  if port_open 127.0.0.1 "$port"; then
    log "Prometheus: port $port is taken (another Prometheus?); not starting one (set PROMETHEUS_PORT to start one elsewhere)"
    export PROMETHEUS_NOTE="not started: port $port is taken (set PROMETHEUS_PORT)"
    return 0
  fi
  mkdir -p "$state_dir/prometheus"
  local config="$state_dir/prometheus/prometheus.yml"
  sed -e "s/127\.0\.0\.1:9101/127.0.0.1:${ORDER_API_HTTP_ADDR##*:}/" \
    -e "s/127\.0\.0\.1:9102/127.0.0.1:${PAYMENT_HEALTH_ADDR##*:}/" \
    -e "s/127\.0\.0\.1:9103/127.0.0.1:${NOTIFICATION_HEALTH_ADDR##*:}/" \
    "$PROMETHEUS_CONFIG_DIR/prometheus.yml" >"$config"
  cp "$PROMETHEUS_CONFIG_DIR/rules.yml" "$state_dir/prometheus/rules.yml"
  log "starting Prometheus on 127.0.0.1:$port (log: $state_dir/prometheus.log)"
  nohup prometheus --config.file="$config" --storage.tsdb.path="$state_dir/prometheus/data" \
    --storage.tsdb.retention.time=2d --web.listen-address="127.0.0.1:$port" \
    >"$state_dir/prometheus.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$state_dir/prometheus.pid"
  STARTED_PIDS+=("prometheus $pid")
  local deadline=$((SECONDS + 30))
  until http_ok "127.0.0.1:$port" /-/ready; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -20 "$state_dir/prometheus.log" >&2
      die "Prometheus did not start, see $state_dir/prometheus.log"
    fi
    sleep 0.3
  done
  export PROMETHEUS_URL="http://127.0.0.1:$port"
}

# stop_started: stops what this script started, newest first.
stop_started() {
  local index entry pid
  for ((index = ${#STARTED_PIDS[@]} - 1; index >= 0; index--)); do
    entry=${STARTED_PIDS[$index]}
    pid=${entry##* }
    stop_pid "$pid" 10 || true
  done
  STARTED_PIDS=()
  stop_private_postgres
}

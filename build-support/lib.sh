# Shared provisioning for the build-support scripts (run, test, bench, chaos,
# fuzz, client-checks, prometheus/check). Source it; it defines functions and
# exports nothing until they are called. It is the one file the scripts source:
# it owns the common helpers (logging, ports, HTTP probes, processes, apt and
# the tools it installs) and sources the rest from build-support/lib/:
#   lib/postgres.sh       PostgreSQL: DATABASE_URL, the private cluster
#   lib/kafka.sh          Apache Kafka: the broker's jars, the embedded broker
#   lib/observability.sh  Jaeger and Prometheus
# (lib/bench.sh holds build-support/bench's own helpers; the bench sources it itself.)
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

# http_ready HOST:PORT: GET /readyz answers 200 (the instance can do its job: see README, health and readiness).
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

# free_port: a TCP port that no socket on this machine uses (none in any state,
# on any address, as `ss` lists them), in the kernel's ephemeral port range:
# tried from a random start onwards, up to 200 ports.
free_port() {
  local low=32768 high=60999 span port try used
  command -v ss >/dev/null 2>&1 || die "free_port needs ss (Debian/Ubuntu: apt-get install iproute2)"
  read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  span=$((high - low + 1))
  port=$((low + ((RANDOM << 15) | RANDOM) % span))
  for ((try = 0; try < 200; try++)); do
    used=$(ss -Htan "sport = :$port") || die "free_port: ss -Htan failed"
    [[ -z $used ]] && { echo "$port"; return 0; }
    port=$((low + (port - low + 1) % span))
  done
  die "no free TCP port found in $low-$high (200 tries)"
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

# ensure_tool COMMAND PACKAGE: COMMAND on the PATH; when it is missing, Debian's
# PACKAGE is installed as root with apt, otherwise the script stops saying so.
ensure_tool() {
  local command=$1 package=$2
  command -v "$command" >/dev/null 2>&1 && return 0
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
    || die "$command is not installed (Debian/Ubuntu: apt-get install $package)"
  log "installing Debian's $package package (apt-get; first time only)"
  apt_install "$CACHE_DIR/$package-install.log" "$package" && command -v "$command" >/dev/null 2>&1 \
    || { tail -20 "$CACHE_DIR/$package-install.log" >&2; die "$command is not installed and installing Debian's $package package failed (see $CACHE_DIR/$package-install.log)"; }
}

# ensure_build_dependencies: what the Rust build and its tests need beyond the
# toolchain: OpenSSL's headers and pkg-config (librdkafka is built with
# OpenSSL, which its SASL/SCRAM needs) and the openssl command
# (build-support/tls-cert); Debian's packages installed as root with apt.
ensure_build_dependencies() {
  if [[ -f /usr/include/openssl/ssl.h ]] || pkg-config --exists openssl 2>/dev/null; then
    command -v pkg-config >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 && return 0
  fi
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
    || die "OpenSSL's headers, pkg-config or openssl are missing (Debian/Ubuntu: apt-get install libssl-dev pkg-config openssl): librdkafka needs them for SASL/SCRAM, build-support/tls-cert the last"
  log "installing Debian's libssl-dev, pkg-config and openssl (apt-get; first time only)"
  mkdir -p "$CACHE_DIR"
  apt_install "$CACHE_DIR/libssl-dev-install.log" libssl-dev pkg-config openssl \
    || { tail -20 "$CACHE_DIR/libssl-dev-install.log" >&2; die "installing libssl-dev and pkg-config failed (see $CACHE_DIR/libssl-dev-install.log)"; }
}

# new_secret: 32 random letters and digits (a password: no character needs
# quoting in a URL, in PGOPTIONS or in a JAAS file).
new_secret() {
  local secret
  secret=$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9' | head -c 32)
  ((${#secret} == 32)) || die "could not read 32 random characters from /dev/urandom"
  printf '%s\n' "$secret"
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

source "$ROOT_DIR/build-support/lib/postgres.sh"
source "$ROOT_DIR/build-support/lib/kafka.sh"
source "$ROOT_DIR/build-support/lib/observability.sh"

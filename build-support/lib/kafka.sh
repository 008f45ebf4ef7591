# Apache Kafka for build-support/lib.sh (sourced by it, not by the scripts): the
# broker's jars (build-support/kafka/pom.xml, fetched by Maven into the cache
# directory once), the embedded single-node KRaft broker run by
# build-support/kafka/broker, its readiness, and KAFKA_BOOTSTRAP_SERVERS.

# The broker version lives in one place, the pom (docker-compose.yml pins the same image tag).
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT_DIR/build-support/kafka/pom.xml")"
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_BROKER="$ROOT_DIR/build-support/kafka/broker"
DEFAULT_KAFKA="127.0.0.1:9092"

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

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

# install_kafka: copies the broker's jars from Maven Central into the cache directory,
# once (again when an earlier install lacks the kafka-tools jar that kafka_ready uses).
install_kafka() {
  [[ -f $KAFKA_LIBS/.installed && -f $KAFKA_LIBS/kafka-tools-$KAFKA_VERSION.jar ]] && return 0
  (($(java_major) >= 17)) || die "the embedded Kafka broker needs Java 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless), or point KAFKA_BOOTSTRAP_SERVERS at a running broker"
  command -v mvn >/dev/null 2>&1 || die "the embedded Kafka broker's jars are fetched with Maven, which is not installed (Debian/Ubuntu: apt-get install maven), or point KAFKA_BOOTSTRAP_SERVERS at a running broker"
  log "installing Apache Kafka $KAFKA_VERSION into $KAFKA_LIBS (first time only; jars from Maven Central)"
  local staging="$KAFKA_LIBS.partial" jar
  rm -rf "$staging"
  mkdir -p "$staging"
  mvn -q -B -f "$ROOT_DIR/build-support/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$staging" >"$CACHE_DIR/kafka-install.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/kafka-install.log" >&2; die "fetching the Kafka jars failed, see $CACHE_DIR/kafka-install.log"; }
  for jar in kafka_2.13 kafka-tools; do
    [[ -f $staging/$jar-$KAFKA_VERSION.jar ]] || die "Maven did not deliver $jar-$KAFKA_VERSION.jar"
  done
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

# boot_kafka PORT DATA [--same-port]: starts the broker and waits until it is
# ready (kafka_ready on its own log); sets KAFKA_PID and KAFKA_PORT. A broker that
# exits while starting (most often because another socket took one of its ports
# in the meantime) has the tail of its logs printed and is started again, up to
# three tries: on new ports, or with --same-port (a restart whose clients already
# know the port) on the same port after a pause.
boot_kafka() {
  local port=$1 data=$2 same=${3:-} try deadline log_start
  for try in 1 2 3; do
    # The log is appended to across starts: only what this start writes counts.
    log_start=$(stat -c %s "$data/logs/server.log" 2>/dev/null || echo 0)
    KAFKA_PID=$(start_kafka "$port" "$data")
    deadline=$((SECONDS + 90))
    until kafka_ready 127.0.0.1 "$port" "$data" "$log_start"; do
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

# kafka_ready HOST PORT [DATA [LOG_OFFSET]]: the broker on HOST:PORT is ready.
#   With DATA, a broker these scripts started with its data there: its log
#   DATA/logs/server.log says "Kafka Server started" (KafkaRaftServer, once the
#   broker is unfenced) past byte LOG_OFFSET (default 0; the whole log when it has
#   rolled over since), and the port accepts connections.
#   Without DATA, a broker found running: the port accepts connections and, when
#   the broker's jars are installed, Kafka's own BrokerApiVersionsCommand (what
#   kafka-broker-api-versions.sh runs) gets its ApiVersions answer.
kafka_ready() {
  local host=$1 port=$2 data=${3:-} since=${4:-0} server_log size
  if [[ -n $data ]]; then
    server_log="$data/logs/server.log"
    size=$(stat -c %s "$server_log" 2>/dev/null) || return 1
    ((size >= since)) || since=0
    grep -q 'KafkaRaftServer.*Kafka Server started' < <(tail -c "+$((since + 1))" "$server_log") || return 1
    port_open "$host" "$port"
    return
  fi
  port_open "$host" "$port" || return 1
  [[ -f $KAFKA_LIBS/kafka-tools-$KAFKA_VERSION.jar ]] && command -v java >/dev/null 2>&1 || return 0
  timeout 60 java -Xmx256m -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$host:$port" >/dev/null 2>&1
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

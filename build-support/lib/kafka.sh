# Apache Kafka for build-support/lib.sh (sourced by it, not by the scripts): the
# broker's jars (build-support/kafka/pom.xml, fetched by Maven into the cache
# directory once), the embedded single-node KRaft broker and the three-node
# cluster (build-support/run --cluster), both run by build-support/kafka/broker,
# their readiness, and KAFKA_BOOTSTRAP_SERVERS.

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

# --- the three-node cluster (build-support/run --cluster) --------------------
# Node N (1-3) listens for clients on KAFKA_CLUSTER_PORT + 2(N-1) (default 9092,
# 9094, 9096) and for the controller quorum on the port after it (9093, 9095,
# 9097), all on 127.0.0.1; its data is STATE_DIR/kafka-N, its pid STATE_DIR/kafka-N.pid.
KAFKA_CLUSTER_NODES=(1 2 3)

# kafka_node_port N: node N's client port.
kafka_node_port() { echo $((${KAFKA_CLUSTER_PORT:-9092} + 2 * ($1 - 1))); }

# kafka_cluster_bootstrap: the cluster's bootstrap list, every node (the one setting clients get).
kafka_cluster_bootstrap() {
  local node list=""
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do list+="${list:+,}127.0.0.1:$(kafka_node_port "$node")"; done
  echo "$list"
}

# kafka_cluster_id STATE_DIR: the id the nodes' data was formatted with (any
# node's meta.properties), or a new one for a cluster that has no data yet.
kafka_cluster_id() {
  local state_dir=$1 node id
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    id=$(sed -n 's/^cluster\.id=//p' "$state_dir/kafka-$node/kraft/meta.properties" 2>/dev/null || true)
    [[ -n $id ]] && { echo "$id"; return 0; }
  done
  java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid
}

# kafka_log_tail N DATA [LOG_OFFSET]: the end of node N's output and of what
# its log DATA/logs/server.log got past byte LOG_OFFSET (this start), indented.
kafka_log_tail() {
  local node=$1 data=$2 since=${3:-0} size
  size=$(stat -c %s "$data/logs/server.log" 2>/dev/null || echo 0)
  ((size >= since)) || since=0
  printf '  --- the end of Kafka node %s'"'"'s output (%s) ---\n' "$node" "$data/broker.out"
  tail -n 15 "$data/broker.out" 2>/dev/null | sed 's/^/  /'
  if ((size > since)); then
    printf '  --- the end of what it logged (%s) ---\n' "$data/logs/server.log"
    tail -c "+$((since + 1))" "$data/logs/server.log" | tail -n 15 | sed 's/^/  /'
  fi
}

# kafka_quorum_status BOOTSTRAP: Kafka's own `kafka-metadata-quorum describe
# --replication` (MetadataQuorumCommand): one line per voter, with its lag and
# whether it is the Leader or a Follower.
kafka_quorum_status() {
  timeout 60 java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.MetadataQuorumCommand \
    --bootstrap-server "$1" describe --replication 2>&1
}

# ensure_kafka_cluster STATE_DIR: starts the three nodes (KRaft, each broker and
# controller, three voters) with their durable data in STATE_DIR/kafka-1..3 and
# waits until every broker is registered and unfenced (its log says "Kafka
# Server started") and the quorum has a leader with all three voters following
# it; exports KAFKA_BOOTSTRAP_SERVERS with every node. A port in use, a node
# that exits while starting or one that does not join within
# KAFKA_CLUSTER_START_TIMEOUT seconds (default 120) stops the start with a
# message naming the node and the end of its logs (the caller stops the others:
# the nodes are in STARTED_PIDS and STATE_DIR/kafka-N.pid). The data is never
# wiped here, so nothing a previous run acknowledged is lost.
ensure_kafka_cluster() {
  local state_dir=$1 node port listener quorum="" cluster_id data pid status deadline
  local timeout=${KAFKA_CLUSTER_START_TIMEOUT:-120}
  local -A log_start=() pids=() ready=()
  [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]] \
    || die "build-support/run --cluster starts its own three Kafka nodes, but KAFKA_BOOTSTRAP_SERVERS is set ($KAFKA_BOOTSTRAP_SERVERS); unset it, or run without --cluster against your own cluster (with KAFKA_REPLICATION_FACTOR=3 KAFKA_MIN_INSYNC_REPLICAS=2)"
  install_kafka
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    port=$(kafka_node_port "$node")
    quorum+="${quorum:+,}$node@127.0.0.1:$((port + 1))"
    for listener in "client $port" "controller $((port + 1))"; do
      port=${listener#* }
      if port_open 127.0.0.1 "$port"; then
        die "port $port (Kafka node $node's ${listener% *} listener) is in use: stop what listens there (ss -ltnp 'sport = :$port' shows it), or move the cluster with KAFKA_CLUSTER_PORT (e.g. KAFKA_CLUSTER_PORT=19192 uses 19192-19197)"
      fi
    done
  done
  cluster_id=$(kafka_cluster_id "$state_dir")
  local started=$SECONDS
  log "starting a three-node Apache Kafka $KAFKA_VERSION cluster $cluster_id on $(kafka_cluster_bootstrap) (controllers ${quorum//[0-9]@/}; data: $state_dir/kafka-{1,2,3})"
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    data="$state_dir/kafka-$node"
    mkdir -p "$data"
    # The log is appended to across starts: only what this start writes counts.
    log_start[$node]=$(stat -c %s "$data/logs/server.log" 2>/dev/null || echo 0)
    # nohup: a closed terminal must not stop the brokers under a detached platform.
    nohup "$KAFKA_BROKER" --libs "$KAFKA_LIBS" --data "$data" --port "$(kafka_node_port "$node")" \
      --node-id "$node" --quorum "$quorum" --cluster-id "$cluster_id" >"$data/broker.out" 2>&1 &
    pid=$!
    # Not a job of this shell: a node that dies is reported by the caller, not by bash.
    disown "$pid"
    pids[$node]=$pid
    echo "$pid" >"$state_dir/kafka-$node.pid"
    STARTED_PIDS+=("kafka-$node $pid")
  done
  deadline=$((SECONDS + timeout))
  while ((${#ready[@]} < ${#KAFKA_CLUSTER_NODES[@]})); do
    for node in "${KAFKA_CLUSTER_NODES[@]}"; do
      [[ -n ${ready[$node]:-} ]] && continue
      data="$state_dir/kafka-$node"
      port=$(kafka_node_port "$node")
      if kafka_ready 127.0.0.1 "$port" "$data" "${log_start[$node]}"; then
        ready[$node]=yes
        log "Kafka node $node is up after $((SECONDS - started)) s (127.0.0.1:$port, registered and unfenced)"
      elif ! kill -0 "${pids[$node]}" 2>/dev/null; then
        kafka_log_tail "$node" "$data" "${log_start[$node]}" >&2
        die "Kafka node $node (127.0.0.1:$port) exited while starting; see $data/broker.out and $data/logs/server.log"
      fi
    done
    if ((${#ready[@]} < ${#KAFKA_CLUSTER_NODES[@]} && SECONDS >= deadline)); then
      local missing=()
      for node in "${KAFKA_CLUSTER_NODES[@]}"; do
        [[ -n ${ready[$node]:-} ]] && continue
        missing+=("$node")
        kafka_log_tail "$node" "$state_dir/kafka-$node" "${log_start[$node]}" >&2
      done
      ((${#ready[@]} == 0)) || printf '  --- the quorum as the nodes that are up see it ---\n%s\n' "$(kafka_quorum_status "$(kafka_cluster_bootstrap)" | sed 's/^/  /')" >&2
      die "Kafka node(s) ${missing[*]} did not join the cluster within $timeout s (a broker starts only once the controller quorum ($quorum) has a leader and has registered and unfenced it); see their logs above"
    fi
    sleep 0.3
  done
  # Every broker is unfenced, which the active controller does only with a
  # quorum; check that all three voters follow the leader.
  deadline=$((SECONDS + 30))
  until status=$(kafka_quorum_status "$(kafka_cluster_bootstrap)") \
    && (($(grep -cE '^[0-9]+[[:space:]].*[[:space:]](Leader|Follower)[[:space:]]*$' <<<"$status") == ${#KAFKA_CLUSTER_NODES[@]})) \
    && grep -qE '[[:space:]]Leader[[:space:]]*$' <<<"$status"; do
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$status" | sed 's/^/  /' >&2
      die "the Kafka controller quorum ($quorum) does not have a leader followed by all three voters (above: kafka-metadata-quorum describe --replication)"
    fi
    sleep 1
  done
  export KAFKA_BOOTSTRAP_SERVERS
  KAFKA_BOOTSTRAP_SERVERS=$(kafka_cluster_bootstrap)
  log "Kafka: $KAFKA_BOOTSTRAP_SERVERS (three nodes; quorum leader: node $(awk '$NF == "Leader" {print $1}' <<<"$status"))"
}

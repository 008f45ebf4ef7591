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
    ${KAFKA_SASL_DIR:+--sasl "$KAFKA_SASL_DIR"} >"$data/broker.out" 2>&1 &
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
    --bootstrap-server "$host:$port" $(kafka_admin_config_option) >/dev/null 2>&1
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
    --bootstrap-server "$1" $(kafka_admin_config_option) describe --replication 2>&1
}

# SASL: build-support/run starts its brokers with authentication and ACLs
# (build-support/kafka/broker --sasl) unless KAFKA_SASL=off. The principals'
# passwords live in one credentials directory, KAFKA_SASL_DIR.
KAFKA_SASL_PRINCIPALS=(admin broker controller order-api payment-service notification-service)

# kafka_sasl_credentials DIR: a password per principal (made once, mode 0600)
# in DIR, the admin's client settings for the Java tools in
# DIR/kafka-admin.properties; sets KAFKA_SASL_DIR.
kafka_sasl_credentials() {
  local dir=$1 who
  (umask 077 && mkdir -p "$dir") || die "cannot create $dir"
  for who in "${KAFKA_SASL_PRINCIPALS[@]}"; do
    [[ -s $dir/kafka-$who.password ]] || (umask 077 && new_secret >"$dir/kafka-$who.password") \
      || die "cannot write $dir/kafka-$who.password"
  done
  (umask 077 && cat >"$dir/kafka-admin.properties" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$dir/kafka-admin.password")";
PROPERTIES
  ) || die "cannot write $dir/kafka-admin.properties"
  KAFKA_SASL_DIR=$dir
}

# kafka_admin_config_option: "--command-config FILE" for the Java tools when
# the brokers take SASL, nothing otherwise.
kafka_admin_config_option() {
  [[ -n ${KAFKA_SASL_DIR:-} ]] && echo "--command-config $KAFKA_SASL_DIR/kafka-admin.properties"
  return 0
}

# kafka_refuse_unauthenticated_data DATA...: dies, saying what to do, when a
# broker data directory was formatted before SASL (no one could log in to it).
kafka_refuse_unauthenticated_data() {
  local data
  for data in "$@"; do
    if [[ -f $data/kraft/meta.properties && ! -f $data/sasl-users ]]; then
      die "$data was formatted before the brokers took SASL, so no one could log in to it: remove it to start afresh (its records are lost), or run with KAFKA_SASL=off"
    fi
  done
}

# kafka_require_jdk: dies, saying what to do, unless java can run
# Provision.java (Java's source launcher compiles it: a JDK, not only a JRE).
kafka_require_jdk() {
  [[ $(java --list-modules 2>/dev/null) == *jdk.compiler@* ]] \
    || die "the Kafka principals are made by build-support/kafka/Provision.java, which needs a JDK (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless); or run with KAFKA_SASL=off"
}

# kafka_provision_principals BOOTSTRAP [REPLICATION [MIN_INSYNC]]: as the admin,
# the services' SCRAM users, the platform's topics (prefix KAFKA_TOPIC_PREFIX)
# and each service's ACLs (build-support/kafka/Provision.java).
kafka_provision_principals() {
  local bootstrap=$1 replication=${2:-1} min_insync=${3:-} output
  kafka_require_jdk
  output=$(timeout 120 java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIBS/*" \
    "$ROOT_DIR/build-support/kafka/Provision.java" --bootstrap "$bootstrap" --credentials "$KAFKA_SASL_DIR" \
    --prefix "${KAFKA_TOPIC_PREFIX:-}" --partitions "${KAFKA_EVENT_PARTITIONS:-6}" \
    --dlq-partitions "${KAFKA_DLQ_PARTITIONS:-1}" --replication "$replication" \
    ${min_insync:+--min-insync "$min_insync"} 2>&1) \
    || { printf '%s\n' "$output" | tail -20 >&2; die "could not create the services' Kafka users, topics and ACLs as the admin"; }
  log "$(tail -1 <<<"$output")"
}

# kafka_cluster_quorum: the controller quorum, "1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097".
kafka_cluster_quorum() {
  local node quorum=""
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do quorum+="${quorum:+,}$node@127.0.0.1:$(($(kafka_node_port "$node") + 1))"; done
  echo "$quorum"
}

# kafka_node_ports_free N: dies naming the port when one of node N's is in use.
kafka_node_ports_free() {
  local node=$1 port listener
  port=$(kafka_node_port "$node")
  for listener in "client $port" "controller $((port + 1))"; do
    port=${listener#* }
    if port_open 127.0.0.1 "$port"; then
      die "port $port (Kafka node $node's ${listener% *} listener) is in use: stop what listens there (ss -ltnp 'sport = :$port' shows it), or move the cluster with KAFKA_CLUSTER_PORT (e.g. KAFKA_CLUSTER_PORT=19192 uses 19192-19197)"
    fi
  done
}

# start_kafka_node STATE_DIR N CLUSTER_ID: starts node N in the background,
# writes its pid to STATE_DIR/kafka-N.pid and adds it to STARTED_PIDS; sets
# KAFKA_NODE_STARTED to "N PID LOG_OFFSET" for wait_kafka_nodes (LOG_OFFSET:
# where this start's lines begin in its log, which is appended to across starts).
start_kafka_node() {
  local state_dir=$1 node=$2 cluster_id=$3 data="$1/kafka-$2" log_start pid
  mkdir -p "$data"
  log_start=$(stat -c %s "$data/logs/server.log" 2>/dev/null || echo 0)
  # nohup: a closed terminal must not stop the brokers under a detached platform.
  nohup "$KAFKA_BROKER" --libs "$KAFKA_LIBS" --data "$data" --port "$(kafka_node_port "$node")" \
    --node-id "$node" --quorum "$(kafka_cluster_quorum)" --cluster-id "$cluster_id" \
    ${KAFKA_SASL_DIR:+--sasl "$KAFKA_SASL_DIR"} >"$data/broker.out" 2>&1 &
  pid=$!
  # Not a job of this shell: a node that dies is reported by the caller, not by bash.
  disown "$pid"
  echo "$pid" >"$state_dir/kafka-$node.pid"
  STARTED_PIDS+=("kafka-$node $pid")
  KAFKA_NODE_STARTED="$node $pid $log_start"
}

# wait_kafka_nodes STATE_DIR "N PID LOG_OFFSET"...: waits until each of these
# nodes is registered and unfenced (its log says "Kafka Server started" past
# LOG_OFFSET), at most KAFKA_CLUSTER_START_TIMEOUT seconds (default 120). When a
# node exits first, or the time is up, prints the end of the failing nodes' logs
# and returns 1 with the reason in KAFKA_WAIT_ERROR.
wait_kafka_nodes() {
  local state_dir=$1 entry node pid offset port started=$SECONDS missing=()
  shift
  local timeout=${KAFKA_CLUSTER_START_TIMEOUT:-120}
  local -A pids=() offsets=() ready=()
  for entry in "$@"; do
    read -r node pid offset <<<"$entry"
    pids[$node]=$pid offsets[$node]=$offset
  done
  while ((${#ready[@]} < ${#pids[@]})); do
    for node in "${!pids[@]}"; do
      [[ -n ${ready[$node]:-} ]] && continue
      port=$(kafka_node_port "$node")
      if kafka_ready 127.0.0.1 "$port" "$state_dir/kafka-$node" "${offsets[$node]}"; then
        ready[$node]=yes
        log "Kafka node $node is up after $((SECONDS - started)) s (127.0.0.1:$port, registered and unfenced)"
      elif ! kill -0 "${pids[$node]}" 2>/dev/null; then
        kafka_log_tail "$node" "$state_dir/kafka-$node" "${offsets[$node]}" >&2
        KAFKA_WAIT_ERROR="Kafka node $node (127.0.0.1:$port) exited while starting; see $state_dir/kafka-$node/broker.out and $state_dir/kafka-$node/logs/server.log"
        return 1
      fi
    done
    if ((${#ready[@]} < ${#pids[@]} && SECONDS - started >= timeout)); then
      for node in "${!pids[@]}"; do
        [[ -n ${ready[$node]:-} ]] && continue
        missing+=("$node")
        kafka_log_tail "$node" "$state_dir/kafka-$node" "${offsets[$node]}" >&2
      done
      printf '  --- the quorum as the nodes that answer see it ---\n%s\n' "$(kafka_quorum_status "$(kafka_cluster_bootstrap)" | sed 's/^/  /')" >&2
      KAFKA_WAIT_ERROR="Kafka node(s) ${missing[*]} did not join the cluster within $timeout s (a broker starts only once the controller quorum ($(kafka_cluster_quorum)) has a leader and has registered and unfenced it); see their logs above"
      return 1
    fi
    sleep 0.3
  done
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
  local state_dir=$1 node cluster_id status deadline started=()
  [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]] \
    || die "build-support/run --cluster starts its own three Kafka nodes, but KAFKA_BOOTSTRAP_SERVERS is set ($KAFKA_BOOTSTRAP_SERVERS); unset it, or run without --cluster against your own cluster (with KAFKA_REPLICATION_FACTOR=3 KAFKA_MIN_INSYNC_REPLICAS=2)"
  install_kafka
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do kafka_node_ports_free "$node"; done
  cluster_id=$(kafka_cluster_id "$state_dir")
  log "starting a three-node Apache Kafka $KAFKA_VERSION cluster $cluster_id on $(kafka_cluster_bootstrap) (controllers $(kafka_cluster_quorum | sed 's/[0-9]@//g'); data: $state_dir/kafka-{1,2,3})"
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    start_kafka_node "$state_dir" "$node" "$cluster_id"
    started+=("$KAFKA_NODE_STARTED")
  done
  wait_kafka_nodes "$state_dir" "${started[@]}" || die "$KAFKA_WAIT_ERROR"
  # Every broker is unfenced, which the active controller does only with a
  # quorum; check that all three voters follow the leader.
  deadline=$((SECONDS + 30))
  until status=$(kafka_quorum_status "$(kafka_cluster_bootstrap)") \
    && (($(grep -cE '^[0-9]+[[:space:]].*[[:space:]](Leader|Follower)[[:space:]]*$' <<<"$status") == ${#KAFKA_CLUSTER_NODES[@]})) \
    && grep -qE '[[:space:]]Leader[[:space:]]*$' <<<"$status"; do
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$status" | sed 's/^/  /' >&2
      die "the Kafka controller quorum ($(kafka_cluster_quorum)) does not have a leader followed by all three voters (above: kafka-metadata-quorum describe --replication)"
    fi
    sleep 1
  done
  export KAFKA_BOOTSTRAP_SERVERS
  KAFKA_BOOTSTRAP_SERVERS=$(kafka_cluster_bootstrap)
  log "Kafka: $KAFKA_BOOTSTRAP_SERVERS (three nodes; quorum leader: node $(awk '$NF == "Leader" {print $1}' <<<"$status"))"
}

# restart_kafka_node STATE_DIR N: (re)starts node N of a running cluster on its
# data, stopping it first if it still runs, and waits until it has rejoined
# (build-support/run --restart-kafka-node N, e.g. after a kill -9). A node that
# does not come back is stopped again and the reason printed.
restart_kafka_node() {
  local state_dir=$1 node=$2 pid
  [[ $node =~ ^[0-9]+$ && " ${KAFKA_CLUSTER_NODES[*]} " == *" $node "* ]] \
    || die "there is no Kafka node '$node': the cluster's nodes are ${KAFKA_CLUSTER_NODES[*]}"
  [[ -f $state_dir/kafka-$node/kraft/meta.properties ]] \
    || die "Kafka node $node has no data in $state_dir/kafka-$node: start the cluster with build-support/run --cluster"
  pid=$(cat "$state_dir/kafka-$node.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    log "stopping Kafka node $node (pid $pid)"
    kill -CONT "$pid" 2>/dev/null || true
    stop_pid "$pid" 30 || true
  fi
  kafka_node_ports_free "$node"
  log "starting Kafka node $node on 127.0.0.1:$(kafka_node_port "$node") (data: $state_dir/kafka-$node)"
  start_kafka_node "$state_dir" "$node" "$(kafka_cluster_id "$state_dir")"
  if ! wait_kafka_nodes "$state_dir" "$KAFKA_NODE_STARTED"; then
    read -r _ pid _ <<<"$KAFKA_NODE_STARTED"
    stop_pid "$pid" 30 || true
    rm -f "$state_dir/kafka-$node.pid"
    die "$KAFKA_WAIT_ERROR"
  fi
}

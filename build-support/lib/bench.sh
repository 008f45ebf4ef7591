# The helpers of build-support/bench (sourced by it after lib.sh, not by the
# other scripts): the services of a phase, load steps, end-to-end figures from
# the databases, and the measurements of the sustained search, the breaker
# drill and the overload phase. They use the bench's globals: BENCH_DIR,
# RESULTS, BIN, PIDS, SERVICE_HTTP, PHASE, API_PORT, base_url.
# shellcheck shell=bash disable=SC2154

emit() { echo "$1" >>"$RESULTS"; }
# now: seconds since the epoch, with nanoseconds; since T: seconds from T, 2 decimals.
now() { date +%s.%N; }
since() { awk -v from="$1" -v to="$(now)" 'BEGIN { printf "%.2f", to - from }'; }
# result JQ_FILTER: the last value the filter gives over every result so far (empty when none).
result() { jq -s -r "[.[] | $1] | last // empty" "$RESULTS"; }

# stop_services: stops the services of the phase, all at once (up to 30 s each).
stop_services() {
  local entry stoppers=()
  for entry in "${PIDS[@]}"; do
    stop_pid "${entry#* }" 30 &
    stoppers+=($!)
  done
  ((${#stoppers[@]} == 0)) || wait "${stoppers[@]}" || true
  PIDS=()
}

fresh_database() {
  psql "$base_url/postgres" -qc "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null 2>&1
  psql "$base_url/postgres" -qc "CREATE DATABASE \"$1\"" >/dev/null
}
# rss_kib PID: peak resident set size (VmHWM) of a running process.
rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# start SERVICE HTTP_VAR KEY=VALUE...: starts a release binary with the
# environment given, waits for /readyz and records the time it took.
start() {
  local service=$1 http_var=$2 http_port started pid
  shift 2
  http_port=$(free_port)
  started=$(now)
  env "$@" "$http_var=127.0.0.1:$http_port" LOG_LEVEL=warn OTEL_EXPORTER_OTLP_ENDPOINT= \
    "$BIN/$service" >"$BENCH_DIR/$service.log" 2>&1 &
  pid=$!
  PIDS+=("$service $pid")
  for _ in $(seq 1 1200); do
    http_ready "127.0.0.1:$http_port" && break
    kill -0 "$pid" 2>/dev/null || die "$service exited while starting, see $BENCH_DIR/$service.log"
    sleep 0.1
  done
  http_ready "127.0.0.1:$http_port" || die "$service was not ready within 120 s"
  emit "{\"kind\":\"ready\",\"phase\":\"$PHASE\",\"service\":\"$service\",\"seconds\":$(since "$started")}"
  SERVICE_HTTP+=(["$service"]="127.0.0.1:$http_port")
}

# sasl_login PRINCIPAL: the KAFKA_SASL_* settings of PRINCIPAL when
# BENCH_SASL_DIR names a credentials directory (a broker taking SASL), nothing
# otherwise. The passwords are hexadecimal (new_secret): no quoting needed.
sasl_login() {
  [[ -n ${BENCH_SASL_DIR:-} ]] || return 0
  echo "KAFKA_SASL_USERNAME=$1 KAFKA_SASL_PASSWORD=$(cat "$BENCH_SASL_DIR/kafka-$1.password") KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
}

# platform DB PREFIX all|api-only [KEY=VALUE...]: the services on a fresh
# database; with BENCH_SASL_DIR, each logs in to Kafka as its own principal
# (its topics and ACLs made first, as the admin). Consumer groups start with
# the service's principal, as its ACLs require.
platform() {
  local database=$1 prefix=$2 only=$3
  shift 3
  fresh_database "$database"
  if [[ -n ${BENCH_SASL_DIR:-} ]]; then
    KAFKA_SASL_DIR=$BENCH_SASL_DIR KAFKA_TOPIC_PREFIX=$prefix kafka_provision_principals "$KAFKA_BOOTSTRAP_SERVERS" >/dev/null
  fi
  API_PORT=$(free_port)
  local common=(DATABASE_URL="$base_url/$database" KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS"
    KAFKA_TOPIC_PREFIX="$prefix" "$@")
  # shellcheck disable=SC2046 # sasl_login's words are KEY=VALUE settings
  start order-api ORDER_API_HTTP_ADDR "${common[@]}" ORDER_API_ADDR="127.0.0.1:$API_PORT" \
    ORDER_API_CONSUMER_GROUP="order-api-${prefix}" $(sasl_login order-api)
  [[ $only == api-only ]] && return
  # shellcheck disable=SC2046
  start payment-service PAYMENT_HEALTH_ADDR "${common[@]}" PAYMENT_CONSUMER_GROUP="payment-service-${prefix}" \
    $(sasl_login payment-service)
  # shellcheck disable=SC2046
  start notification-service NOTIFICATION_HEALTH_ADDR "${common[@]}" \
    NOTIFICATION_CONSUMER_GROUP="notification-service-${prefix}" $(sasl_login notification-service)
}

# loadgen LABEL ARGS...: one load step; its JSON line goes to the results.
# With BENCH_SASL_DIR its topic reader (--bootstrap) logs in as the admin.
loadgen() {
  local label=$1
  shift
  # shellcheck disable=SC2046
  env $(sasl_login admin) "$BIN/foodorder-loadgen" --addr "127.0.0.1:$API_PORT" --json --label "$label" "$@" \
    >"$BENCH_DIR/$label.out" 2>"$BENCH_DIR/$label.err" || die "load step $label failed, see $BENCH_DIR/$label.err"
  tail -n 1 "$BENCH_DIR/$label.out" | sed "s/^{/{\"kind\":\"load\",\"phase\":\"$PHASE\",/" >>"$RESULTS"
  sed -n '1,2p' "$BENCH_DIR/$label.out" | sed 's/^/    /'
}

record_rss() {
  local entry
  for entry in "${PIDS[@]}"; do
    emit "{\"kind\":\"rss\",\"phase\":\"$PHASE\",\"service\":\"${entry%% *}\",\"kib\":$(rss_kib "${entry#* }")}"
  done
  [[ -n ${KAFKA_PID:-} ]] && emit "{\"kind\":\"rss\",\"phase\":\"$PHASE\",\"service\":\"kafka\",\"kib\":$(rss_kib "$KAFKA_PID")}"
  return 0
}

now_db() { psql "$base_url/$1" -tAc "SELECT clock_timestamp()"; }

# wait_settled DB SINCE SECONDS: waits until every order created since SINCE
# is terminal (order-api recorded its outcome) and notified; false when some
# are not within SECONDS.
wait_settled() {
  local deadline=$((SECONDS + $3))
  until [[ $(psql "$base_url/$1" -tAc "SELECT count(*) FROM orders.orders o WHERE o.created_at >= '$2' AND (o.status NOT IN ('COMPLETED', 'FAILED') OR NOT EXISTS (SELECT 1 FROM notifications.notifications n WHERE n.order_id = o.id))") == 0 ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# settle DATABASE SINCE LIMIT LABEL [WARMUP]: waits (bounded) until every order
# created since SINCE is terminal and notified, then emits the end-to-end figures of those
# orders. With WARMUP seconds (the longest one payment can take), it also emits
# the sustained rate: outcomes recorded per second between the first order
# plus WARMUP (the pipeline full) and the last order (before the drain).
settle() {
  local database=$1 since=$2 limit=$3 url="$base_url/$1" warmup=${5:-0}
  wait_settled "$database" "$since" "$limit" || log "not every order was terminal and notified within ${limit} s; figures cover what finished"
  psql "$url" -tAc "
    WITH placed AS (SELECT id, status, created_at FROM orders.orders WHERE created_at >= '$since'),
      steady AS (SELECT min(created_at) + make_interval(secs => $warmup) AS from_at, max(created_at) AS to_at FROM placed)
    SELECT json_build_object('kind', 'end_to_end', 'phase', '$PHASE', 'label', '$4',
      'orders', count(*),
      'terminal', count(*) FILTER (WHERE o.status IN ('COMPLETED', 'FAILED')),
      'completed', count(*) FILTER (WHERE o.status = 'COMPLETED'),
      'notified', count(n.order_id),
      'failed_fast_by_breaker', count(*) FILTER (WHERE s.error_message LIKE '%circuit breaker%'),
      'terminal_per_s', round((count(s.order_id) / NULLIF(extract(epoch FROM max(s.received_at) - min(o.created_at)), 0))::numeric, 1),
      'sustained_per_s', CASE WHEN $warmup > 0 THEN round((count(*) FILTER (WHERE s.received_at BETWEEN steady.from_at AND steady.to_at)
        / NULLIF(extract(epoch FROM steady.to_at - steady.from_at), 0))::numeric, 1) END,
      'sustained_window_s', CASE WHEN $warmup > 0 THEN round(extract(epoch FROM steady.to_at - steady.from_at)::numeric, 1) END,
      'drain_s', round(extract(epoch FROM max(s.received_at) - max(o.created_at))::numeric, 1),
      'notified_per_s', round((count(n.order_id) / NULLIF(extract(epoch FROM max(n.created_at) - min(o.created_at)), 0))::numeric, 1),
      'p50_ms', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM n.created_at - o.created_at)) * 1000)::numeric, 1),
      'p99_ms', round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM n.created_at - o.created_at)) * 1000)::numeric, 1))
    FROM placed o
    CROSS JOIN steady
    LEFT JOIN orders.order_payments s ON s.order_id = o.id
    LEFT JOIN notifications.notifications n ON n.order_id = o.id
    GROUP BY steady.from_at, steady.to_at" >>"$RESULTS"
}

# sustained_search DB START STEPS SECONDS: open loop at START orders/s for
# SECONDS, then a 10 s drain; a step passes when every placed order (no errors,
# none dropped) is terminal and notified and the end-to-end p99 is under 1 s.
# ×1.15 after a pass, ×0.85 after a fail; emits each step and the best pass.
sustained_search() {
  local database=$1 rate=$2 steps=$3 seconds=$4 step since label why best=null best_label=""
  for ((step = 1; step <= steps; step++)); do
    label="sustained-$step"
    log "  sustained search, step $step of $steps: open loop at $rate/s for $seconds s"
    since=$(now_db "$database")
    loadgen "$label" --rate "$rate" --duration "$seconds" --no-progress
    settle "$database" "$since" 10 "$label"
    why=$(jq -s -r --arg want "$label" '
      (map(select(.kind == "load" and .label == $want)) | last) as $l
      | (map(select(.kind == "end_to_end" and .label == $want)) | last) as $e
      | [ (if ($l.errors | length) > 0 or $l.dropped > 0 then "calls failed or dropped: \($l.errors) \($l.dropped)" else empty end),
          (if $e.orders == 0 then "no orders" else empty end),
          (if $e.notified < $e.orders then "\($e.orders - $e.notified) of \($e.orders) not notified 10 s after the load" else empty end),
          (if $e.terminal < $e.orders then "\($e.orders - $e.terminal) not terminal" else empty end),
          (if ($e.p99_ms // 1e9) >= 1000 then "p99 \($e.p99_ms) ms" else empty end) ] | join("; ")' "$RESULTS")
    emit "$(jq -nc --argjson step "$step" --argjson rate "$rate" --arg why "$why" --arg want "$label" \
      '{kind: "sustained_step", phase: "zero", step: $step, rate: $rate, label: $want, pass: ($why == ""), why: $why}')"
    if [[ -z $why ]]; then
      log "    passed"
      if [[ $best == null ]] || awk -v r="$rate" -v b="$best" 'BEGIN { exit !(r > b) }'; then
        best=$rate best_label=$label
      fi
      rate=$(awk -v r="$rate" 'BEGIN { printf "%.1f", r * 1.15 }')
    else
      log "    failed: $why"
      # What is still in the pipeline must not load the next step.
      wait_settled "$database" "$since" 180 || log "    still not every order terminal and notified after 180 s"
      rate=$(awk -v r="$rate" 'BEGIN { printf "%.1f", r * 0.85 }')
    fi
  done
  emit "{\"kind\":\"sustained\",\"phase\":\"zero\",\"rate\":$best,\"label\":\"$best_label\",\"steps\":$steps,\"seconds\":$seconds}"
}

# breaker_metric HOST:PORT REGEX: the sum of the samples of payment's metrics
# whose lines start with REGEX (the value follows the labels).
breaker_metric() {
  curl -fsS --max-time 2 "http://$1/metrics" \
    | awk -v pattern="^$2" '$0 ~ pattern { sum += $NF } END { printf "%d\n", sum }'
}
breaker_trips() { breaker_metric "$1" 'foodorder_payment_breaker_transitions_total[{][^}]*to="open"[^}]*[}] '; }

# wait_breaker HOST:PORT STATE FROM LIMIT: polls the breaker's state every
# 100 ms; prints the seconds from FROM until it reads STATE, or null after LIMIT s.
wait_breaker() {
  local deadline=$((SECONDS + $4))
  while ((SECONDS < deadline)); do
    [[ $(breaker_metric "$1" 'foodorder_payment_breaker_state[ {]' 2>/dev/null) == "$2" ]] && { since "$3"; return; }
    sleep 0.1
  done
  echo null
}

# mock_gateway HOST:PORT QUERY: sets the payment service's mock gateway (same host only).
mock_gateway() {
  curl -fsS --max-time 5 -X PUT "http://$1/mock-gateway?$2" >/dev/null || die "PUT /mock-gateway?$2 failed"
  log "  mock gateway: $2"
}

# breaker_drill RATE HEALTHY RECOVERY: the drill described in the bench's
# header, under one open-loop load that runs through; emits "breaker_drill".
breaker_drill() {
  local rate=$1 healthy=$2 recovery=$3 payment=${SERVICE_HTTP[payment-service]} open_wait=15
  local load healthy_trips raised open_s=null close_s=null lowered
  loadgen breaker-load --rate "$rate" --duration "$((healthy + open_wait + recovery + 20))" --no-progress &
  load=$!
  sleep "$healthy"
  healthy_trips=$(breaker_trips "$payment")
  raised=$(now)
  mock_gateway "$payment" timeout_rate=0.9
  open_s=$(wait_breaker "$payment" 2 "$raised" "$open_wait")
  lowered=$(now)
  mock_gateway "$payment" timeout_rate=0
  [[ $open_s == null ]] || close_s=$(wait_breaker "$payment" 0 "$lowered" "$((recovery + 15))")
  log "  opened after ${open_s} s, closed ${close_s} s after the gateway recovered; waiting for the load to end"
  wait "$load"
  emit "{\"kind\":\"breaker_drill\",\"phase\":\"breaker\",\"rate\":$rate,\"healthy_seconds\":$healthy,\"healthy_trips\":$healthy_trips,\"open_s\":$open_s,\"close_s\":$close_s,\"recovery_s\":$recovery,\"trips\":$(breaker_trips "$payment")}"
}

# overload_run DB RATE SECONDS BOUND: open loop at RATE for SECONDS, sampling
# the orders not yet terminal every second; then settles; emits "overload".
overload_run() {
  local database=$1 rate=$2 seconds=$3 bound=$4 since load backlog most=0
  since=$(now_db "$database")
  loadgen overload --rate "$rate" --duration "$seconds" --no-progress &
  load=$!
  while kill -0 "$load" 2>/dev/null; do
    backlog=$(psql "$base_url/$database" -tAc "SELECT count(*) FROM orders.orders WHERE status = 'PROCESSING'")
    if ((backlog > most)); then most=$backlog; fi
    sleep 1
  done
  wait "$load"
  settle "$database" "$since" 180 overload
  emit "{\"kind\":\"overload\",\"phase\":\"overload\",\"rate\":$rate,\"seconds\":$seconds,\"bound\":$bound,\"max_backlog\":$most}"
}

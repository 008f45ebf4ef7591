# Observability for build-support/lib.sh (sourced by it, not by the scripts):
# Jaeger (built from the Go module proxy into the cache directory once, run with
# in-memory storage, or an OTLP endpoint already there) and Prometheus (Debian's
# prometheus package, run with build-support/prometheus/'s config and rules).

JAEGER_VERSION="v1.75.0"
# The same release's container image (Jaeger v2 tags its Go module v1.x: v1.75.0 is v2.12.0),
# which docker-compose.yml must use.
JAEGER_IMAGE_VERSION="2.12.0"
JAEGER_BIN="$CACHE_DIR/jaeger-$JAEGER_VERSION/jaeger"
JAEGER_CONFIG="$ROOT_DIR/build-support/jaeger/config.yaml"
PROMETHEUS_CONFIG_DIR="$ROOT_DIR/build-support/prometheus"
# Prometheus's console pages (/consoles/foodorder.html: the dashboard's key panels,
# where Grafana does not run) are build-support/prometheus/consoles; the console
# libraries they use (prom.lib) are Debian's, which the package keeps as examples.
DEBIAN_CONSOLE_LIBRARIES=/usr/share/doc/prometheus/examples/console_libraries

# jaeger_go_check: dies, saying what to do, when Jaeger is not built yet and
# the Go toolchain that builds it is missing.
jaeger_go_check() {
  [[ -x $JAEGER_BIN ]] || command -v go >/dev/null 2>&1 \
    || die "Jaeger is built with the Go toolchain (1.24.6 or newer, from https://go.dev/dl; Debian 12's golang-go is too old), which is not installed; or set FOODORDER_JAEGER=off"
}

# install_jaeger: builds Jaeger with the Go toolchain into the cache directory, once.
# `go install module@version` refuses modules whose go.mod has replace directives
# (Jaeger's has one), so the module is downloaded and built as the main module.
install_jaeger() {
  [[ -x $JAEGER_BIN ]] && return 0
  jaeger_go_check
  mkdir -p "$CACHE_DIR"
  # One build at a time (a run's background build and the test suite share the
  # build directory): the second waits, then finds the binary made.
  local lock
  exec {lock}>"$CACHE_DIR/jaeger-install.lock"
  flock "$lock"
  if [[ -x $JAEGER_BIN ]]; then
    exec {lock}>&-
    return 0
  fi
  log "installing Jaeger $JAEGER_VERSION into $(dirname "$JAEGER_BIN") (first time only; built from the Go module proxy)"
  local source build="$CACHE_DIR/jaeger-build"
  mkdir -p "$CACHE_DIR"
  go mod download "github.com/jaegertracing/jaeger@$JAEGER_VERSION" >"$CACHE_DIR/jaeger-install.log" 2>&1 \
    || { cat "$CACHE_DIR/jaeger-install.log" >&2; die "downloading Jaeger failed, see $CACHE_DIR/jaeger-install.log"; }
  # Where the module cache keeps it (the module path has no capitals to escape).
  source="$(go env GOMODCACHE)/github.com/jaegertracing/jaeger@$JAEGER_VERSION"
  [[ -d $source/cmd/jaeger ]] || die "go mod download did not leave Jaeger in $source"
  rm -rf "$build"
  cp -r "$source" "$build"
  chmod -R u+w "$build"
  (cd "$build" && go build -trimpath -o "$JAEGER_BIN.partial" ./cmd/jaeger) >>"$CACHE_DIR/jaeger-install.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/jaeger-install.log" >&2; rm -rf "$build"; die "building Jaeger failed, see $CACHE_DIR/jaeger-install.log"; }
  mv "$JAEGER_BIN.partial" "$JAEGER_BIN"
  rm -rf "$build"
  exec {lock}>&-
}

# jaeger_enabled: false when FOODORDER_JAEGER is off/0/false/no.
jaeger_enabled() {
  case "${FOODORDER_JAEGER:-on}" in off | 0 | false | no) return 1 ;; *) return 0 ;; esac
}

# ensure_jaeger STATE_DIR [--background]: points the services' OTEL_EXPORTER_OTLP_ENDPOINT at a Jaeger.
# An endpoint already set is used as it is; otherwise the embedded Jaeger is started
# (OTLP gRPC on JAEGER_OTLP_PORT, default 4317; query API and UI on JAEGER_QUERY_PORT,
# default 16686). Sets JAEGER_QUERY_URL when the query API is known. With
# --background and Jaeger not built yet (the first run on a machine: minutes of
# compiling), nothing is built here: the endpoints are set already (the
# services' exporters connect once Jaeger listens) and JAEGER_PENDING=yes;
# jaeger_build_in_background then starts the build once the services are up.
ensure_jaeger() {
  local state_dir=$1 background=${2:-}
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
  if [[ ! -x $JAEGER_BIN && $background == --background ]]; then
    jaeger_go_check
    log "Jaeger is not built yet: it is built in the background once the services are up (first run only)"
    JAEGER_PENDING=yes
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
    export JAEGER_QUERY_URL="http://127.0.0.1:$query_port"
    return 0
  fi
  install_jaeger
  start_jaeger "$state_dir"
  STARTED_PIDS+=("jaeger $(cat "$state_dir/jaeger.pid")")
}

# jaeger_build_in_background STATE_DIR: after ensure_jaeger --background found
# Jaeger not built (JAEGER_PENDING=yes), builds and starts it in the background
# with build-support/jaeger/build-and-start, in a process group of its own (pid
# in STATE_DIR/jaeger-build.pid, log STATE_DIR/jaeger-build.log). Started once
# the services are built and up, so that the two builds never share the cores.
jaeger_build_in_background() {
  local state_dir=$1
  [[ ${JAEGER_PENDING:-} == yes ]] || return 0
  mkdir -p "$state_dir"
  log "building Jaeger in the background (log: $state_dir/jaeger-build.log); traces flow once it is up"
  JAEGER_OTLP_PORT=${JAEGER_OTLP_PORT:-4317} JAEGER_QUERY_PORT=${JAEGER_QUERY_PORT:-16686} \
    setsid nohup "$ROOT_DIR/build-support/jaeger/build-and-start" "$state_dir" >"$state_dir/jaeger-build.log" 2>&1 </dev/null &
  echo $! >"$state_dir/jaeger-build.pid"
}

# start_jaeger STATE_DIR: starts the built Jaeger (pid in STATE_DIR/jaeger.pid,
# log STATE_DIR/jaeger.log) and waits until it listens; exports the endpoints.
start_jaeger() {
  local state_dir=$1 otlp_port=${JAEGER_OTLP_PORT:-4317} query_port=${JAEGER_QUERY_PORT:-16686}
  mkdir -p "$state_dir"
  log "starting Jaeger on 127.0.0.1:$query_port (OTLP 127.0.0.1:$otlp_port, in-memory storage)"
  JAEGER_OTLP_PORT=$otlp_port JAEGER_QUERY_PORT=$query_port \
    JAEGER_OTLP_HTTP_PORT=${JAEGER_OTLP_HTTP_PORT:-4318} JAEGER_QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-16685} \
    JAEGER_HEALTH_PORT=${JAEGER_HEALTH_PORT:-13133} \
    nohup "$JAEGER_BIN" --config "$JAEGER_CONFIG" >"$state_dir/jaeger.log" 2>&1 &
  echo $! >"$state_dir/jaeger.pid"
  wait_for_port 127.0.0.1 "$query_port" 30 && wait_for_port 127.0.0.1 "$otlp_port" 5 \
    || { tail -20 "$state_dir/jaeger.log" >&2; die "Jaeger did not start, see $state_dir/jaeger.log"; }
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
  export JAEGER_QUERY_URL="http://127.0.0.1:$query_port"
}

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

# prometheus_console_libraries: prints the directory of Debian's console libraries.
# Images that leave /usr/share/doc out (dpkg path-exclude, as Docker's slim ones do)
# lack them; they are then taken from the installed version's .deb into the cache
# directory, once. Returns 1 when neither works (the log is in the cache directory).
prometheus_console_libraries() {
  [[ -f $DEBIAN_CONSOLE_LIBRARIES/prom.lib ]] && { printf '%s\n' "$DEBIAN_CONSOLE_LIBRARIES"; return 0; }
  local version cached work
  version=$(dpkg-query -W -f='${Version}' prometheus 2>/dev/null) || return 1
  cached="$CACHE_DIR/prometheus-console-libraries-${version//[^A-Za-z0-9.+~-]/_}"
  if [[ ! -f $cached/prom.lib ]]; then
    mkdir -p "$CACHE_DIR"
    work=$(mktemp -d) || return 1
    (
      cd "$work" && timeout 300 apt-get download "prometheus=$version" \
        && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ".$DEBIAN_CONSOLE_LIBRARIES" \
        && mkdir -p "$cached" && cp ".$DEBIAN_CONSOLE_LIBRARIES"/*.lib "$cached/"
    ) >"$CACHE_DIR/prometheus-console-libraries.log" 2>&1
    rm -rf "$work"
  fi
  [[ -f $cached/prom.lib ]] && printf '%s\n' "$cached"
}

# prometheus_config OUT: build-support/prometheus/prometheus.yml with the
# scrape targets of this run written to OUT. The targets are SCRAPE_TARGETS
# ("job 127.0.0.1:port" entries, one per instance: build-support/run sets it)
# or, without it, ORDER_API_HTTP_ADDR, PAYMENT_HEALTH_ADDR and
# NOTIFICATION_HEALTH_ADDR (default ports 9101-9103), one instance each. Each
# instance is a target of its service's job, so `job` names the service and
# `instance` (host:port) the instance.
prometheus_config() {
  local out=$1 job address entry targets
  local -A template=([order-api]=9101 [payment-service]=9102 [notification-service]=9103) list=()
  local entries=(${SCRAPE_TARGETS[@]+"${SCRAPE_TARGETS[@]}"})
  if ((${#entries[@]} == 0)); then
    local order_api=${ORDER_API_HTTP_ADDR:-127.0.0.1:9101} payment=${PAYMENT_HEALTH_ADDR:-127.0.0.1:9102}
    local notification=${NOTIFICATION_HEALTH_ADDR:-127.0.0.1:9103}
    entries=("order-api 127.0.0.1:${order_api##*:}" "payment-service 127.0.0.1:${payment##*:}"
      "notification-service 127.0.0.1:${notification##*:}")
  fi
  for entry in "${entries[@]}"; do
    job=${entry% *} address=${entry#* }
    list[$job]+="${list[$job]:+, }\"$address\""
  done
  local edits=()
  for job in "${!template[@]}"; do
    targets=${list[$job]:-\"127.0.0.1:${template[$job]}\"}
    edits+=(-e "/targets:/s/\"127\\.0\\.0\\.1:${template[$job]}\"/$targets/")
  done
  sed "${edits[@]}" "$PROMETHEUS_CONFIG_DIR/prometheus.yml" >"$out"
}

# ensure_prometheus STATE_DIR: starts Prometheus on 127.0.0.1:${PROMETHEUS_PORT:-9090}
# scraping every service instance (prometheus_config), with the recording and
# alerting rules and the console pages, storage in STATE_DIR/prometheus; exports
# PROMETHEUS_URL.
# Without Prometheus it says so and returns (the platform runs without it).
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
  prometheus_config "$config"
  cp "$PROMETHEUS_CONFIG_DIR/rules.yml" "$state_dir/prometheus/rules.yml"
  local consoles=(--web.console.templates="$PROMETHEUS_CONFIG_DIR/consoles") libraries
  if libraries=$(prometheus_console_libraries); then
    consoles+=(--web.console.libraries="$libraries")
  else
    log "Prometheus: Debian's console libraries are missing (see $CACHE_DIR/prometheus-console-libraries.log); /consoles/foodorder.html will not render"
  fi
  log "starting Prometheus on 127.0.0.1:$port (log: $state_dir/prometheus.log)"
  nohup prometheus --config.file="$config" --storage.tsdb.path="$state_dir/prometheus/data" \
    --storage.tsdb.retention.time=2d --web.listen-address="127.0.0.1:$port" "${consoles[@]}" \
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

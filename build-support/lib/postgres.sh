# PostgreSQL for build-support/lib.sh (sourced by it, not by the scripts): the
# pieces of DATABASE_URL, the server binaries (Debian's postgresql package as
# root with apt), the private cluster the scripts start when DATABASE_URL does
# not answer, and the database itself.

DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/foodorder"

# url_part URL FIELD (host|port|db|base): pieces of a postgres:// or postgresql://
# URL, postgres[ql]://[USER[:PASSWORD]@][HOST][:PORT][/DB][?QUERY]. host defaults
# to 127.0.0.1 (an IPv6 host loses its brackets), port to 5432, db to postgres;
# base is the same URL on the database postgres (query kept, fragment dropped).
url_part() {
  local url=$1 field=$2 scheme authority path query host port db
  local url_re='^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(/[^?#]*)?(\?[^#]*)?(#.*)?$'
  local host_re='^(\[[^]]*\]|[^:]*)(:([0-9]*))?$'
  [[ $url =~ $url_re ]] && scheme=${BASH_REMATCH[1],,} && [[ $scheme == postgres || $scheme == postgresql ]] \
    || { printf 'error: not a postgres:// or postgresql:// URL: %s\n' "$url" >&2; return 1; }
  authority=${BASH_REMATCH[2]} path=${BASH_REMATCH[3]} query=${BASH_REMATCH[4]#\?}
  # The host and port follow the last @ (a password may contain one).
  [[ ${authority##*@} =~ $host_re ]] \
    || { printf 'error: bad host or port in the URL %s\n' "$url" >&2; return 1; }
  host=${BASH_REMATCH[1]#\[} port=${BASH_REMATCH[3]}
  host=${host%\]}
  if [[ -n $port ]]; then
    ((${#port} <= 5 && 10#$port <= 65535)) \
      || { printf 'error: port out of range in the URL %s\n' "$url" >&2; return 1; }
    port=$((10#$port))
  fi
  db=${path#"${path%%[!/]*}"}
  case $field in
    host) host=${host,,}; echo "${host:-127.0.0.1}" ;;
    port) [[ -n $port && $port != 0 ]] && echo "$port" || echo 5432 ;;
    db) echo "${db:-postgres}" ;;
    base) echo "$scheme://$authority/postgres${query:+?$query}" ;;
    *) printf 'error: url_part: unknown field %s\n' "$field" >&2; return 1 ;;
  esac
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

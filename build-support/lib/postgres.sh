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
  else
    port=$(free_port)
    log "starting the private PostgreSQL cluster on 127.0.0.1:$port"
    pg_start_cluster "$pg_ctl" "$data" "$port" || die "the private PostgreSQL cluster did not start, see $data/server.log"
    PRIVATE_PG_CTL="$pg_ctl"
    PRIVATE_PG_DATA="$data"
  fi
  require_passwords "$pg_ctl" "$data" "$port"
  export DATABASE_URL="postgres://postgres:$(cat "$data/foodorder-superuser.password")@127.0.0.1:$port/$(url_part "$DATABASE_URL" db)"
}

# require_passwords PG_CTL DATA PORT: every TCP connection to the private
# cluster proves its role's password (scram-sha-256), the superuser's
# included; only the Unix socket in DATA, which no one but root and the
# cluster's owner can reach, is trusted. The superuser's password is made
# once, kept in DATA/foodorder-superuser.password (mode 0600), and set over
# that socket. A cluster made by an older version (trust on TCP) is brought
# to this the first time.
require_passwords() {
  local pg_ctl=$1 data=$2 port=$3 psql password_file="$2/foodorder-superuser.password" hba
  psql=$(find_pg_bin psql) || die "psql is not installed (Debian/Ubuntu: apt-get install postgresql-client)"
  if [[ ! -s $password_file ]]; then
    (umask 077 && new_secret >"$password_file.new") || die "cannot write $password_file"
    [[ $(id -u) -eq 0 ]] && chown postgres "$password_file.new"
    # psql reads the password from its input, never from its command line
    # (which every local user can see).
    printf '\\set password `cat '"'"'%s'"'"'`\nALTER ROLE postgres PASSWORD :'"'"'password'"'"';\n' "$password_file.new" \
      | as_pg_user "$psql" -h "$data" -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 -f - >/dev/null \
      || die "could not set the superuser's password of the private PostgreSQL cluster in $data"
    mv "$password_file.new" "$password_file"
  fi
  hba='# Written by build-support (lib/postgres.sh) at every start: the Unix socket
# (in the data directory, reachable by root and the cluster'"'"'s owner only) is
# trusted; every TCP connection proves its role'"'"'s password.
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256'
  # For the tests: this server refuses a wrong password (roles::).
  export FOODORDER_POSTGRES_CHECKS_PASSWORDS=1
  if [[ $(cat "$data/pg_hba.conf" 2>/dev/null) != "$hba" ]]; then
    printf '%s\n' "$hba" >"$data/pg_hba.conf"
    as_pg_user "$pg_ctl" -D "$data" reload >/dev/null || die "could not reload the private PostgreSQL cluster's pg_hba.conf"
  fi
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

# provision_roles DIR: the platform's roles on DATABASE_URL's database
# (migrations/roles.sql: foodorder_orders, foodorder_payments and
# foodorder_notifications each own their schema and nothing else;
# foodorder_admin reads every schema), made as DATABASE_URL's role (a
# superuser, or one with CREATEROLE that owns the schemas). Passwords are made
# once per installation and kept in DIR (mode 0700, one file per role, 0600);
# running it again keeps them. Sets ROLE_DATABASE_URL[orders|payments|
# notifications|admin], each the same server and database as that role.
provision_roles() {
  local dir=$1 name options=() host port db
  declare -gA ROLE_DATABASE_URL=()
  (umask 077 && mkdir -p "$dir") && chmod 700 "$dir" || die "cannot create $dir"
  for name in orders payments notifications admin; do
    [[ -s $dir/postgres-$name.password ]] || (umask 077 && new_secret >"$dir/postgres-$name.password") \
      || die "cannot write $dir/postgres-$name.password"
    options+=("-c foodorder.${name}_role=foodorder_$name" "-c foodorder.${name}_password=$(cat "$dir/postgres-$name.password")")
  done
  PGOPTIONS="${options[*]}" psql "$DATABASE_URL" -qAt -v ON_ERROR_STOP=1 -f "$ROOT_DIR/migrations/roles.sql" \
    >"$dir/provision.log" 2>&1 \
    || { cat "$dir/provision.log" >&2; die "could not create the services' database roles on $(url_part "$DATABASE_URL" host):$(url_part "$DATABASE_URL" port) (the role of DATABASE_URL needs to be a superuser); FOODORDER_DB_ROLES=off runs every service as DATABASE_URL's role instead"; }
  host=$(url_part "$DATABASE_URL" host) port=$(url_part "$DATABASE_URL" port) db=$(url_part "$DATABASE_URL" db)
  [[ $host == *:* ]] && host="[$host]"
  for name in orders payments notifications admin; do
    ROLE_DATABASE_URL[$name]="postgres://foodorder_$name:$(cat "$dir/postgres-$name.password")@$host:$port/$db"
  done
}

#!/usr/bin/env bash
# A throwaway PostgreSQL server for the `postgres` tests and for trying multi-worker Optuna studies.
#
#   scripts/postgres.sh start    install Debian's postgresql if missing, create the cluster on first use,
#                                start it on 127.0.0.1 (a free port from 54329), create user + database qsfl
#   scripts/postgres.sh url      print the SQLAlchemy URL, e.g. postgresql+psycopg2://qsfl:PW@127.0.0.1:54329/qsfl
#   scripts/postgres.sh status   say whether it runs (exit 0 if it does, 3 if not)
#   scripts/postgres.sh stop     stop it (the data stays; `start` brings the same database back)
#   scripts/postgres.sh purge    stop it and delete its directory
#
# Every command is idempotent. The cluster lives in $QSFL_PG_DIR (default /tmp/qsfl-postgres-$UID): data/,
# the log, the unix socket (run/, owner-only), the chosen port and the generated password. It listens on
# 127.0.0.1 only. As root, the server runs as the `postgres` system user (initdb refuses root). Environment:
# QSFL_PG_DIR, QSFL_PG_PORT (first port tried, default 54329), QSFL_PG_USER (default qsfl), QSFL_PG_DB (qsfl).
# This server is for tests and local studies; for a shared study server see docs/reliability.md.
set -euo pipefail

DIR=${QSFL_PG_DIR:-/tmp/qsfl-postgres-$(id -u)}
FIRST_PORT=${QSFL_PG_PORT:-54329}
DB_USER=${QSFL_PG_USER:-qsfl}
DB_NAME=${QSFL_PG_DB:-qsfl}
DATA=$DIR/data
SOCK=$DIR/run
LOG=$DIR/postgres.log

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

valid_ident() { [[ $1 =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; }
valid_ident "$DB_USER" || die "QSFL_PG_USER=$DB_USER: use lowercase letters, digits, _"
valid_ident "$DB_NAME" || die "QSFL_PG_DB=$DB_NAME: use lowercase letters, digits, _"

# The account that owns and runs the cluster: `postgres` when we are root (initdb refuses root), else us.
if [ "$(id -u)" -eq 0 ]; then RUN_AS=postgres; else RUN_AS=$(id -un); fi

as_owner() {
    if [ "$(id -un)" = "$RUN_AS" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$RUN_AS" -- "$@"
    else
        local cmd; printf -v cmd '%q ' "$@"
        su -s /bin/sh "$RUN_AS" -c "$cmd"
    fi
}

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return 0
    fi
    return 1
}

install_postgres() {
    bindir >/dev/null && return 0
    say "PostgreSQL not found: installing Debian's postgresql package"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install the postgresql package first"
        sudo="sudo"
    fi
    # Debian's package creates and starts a default cluster on 5432 unless told not to; we need none.
    $sudo mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/qsfl-no-main.conf >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
    bindir >/dev/null || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() {
    local bin; bin=$(bindir) || return 1
    [ -f "$DATA/PG_VERSION" ] || return 1
    as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

port() { cat "$DIR/port"; }
password() { cat "$DIR/password"; }

psql_super() {  # psql as the cluster's superuser over the private unix socket
    local bin; bin=$(bindir)
    as_owner "$bin/psql" -h "$SOCK" -p "$(port)" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"
}

init_cluster() {
    local bin; bin=$(bindir)
    [ -f "$DATA/PG_VERSION" ] && return 0
    say "creating a cluster in $DATA"
    mkdir -p "$DIR"
    rm -rf "$DATA" "$SOCK"
    mkdir -p "$DATA" "$SOCK"
    chmod 700 "$DATA" "$SOCK"
    if [ ! -s "$DIR/password" ]; then
        (umask 077; od -An -tx1 -N16 /dev/urandom | tr -d ' \n' > "$DIR/password")
    fi
    if [ "$RUN_AS" != "$(id -un)" ]; then chown -R "$RUN_AS" "$DIR"; fi
    chmod 711 "$DIR"   # the owner's files inside stay private; others only traverse
    as_owner "$bin/initdb" -D "$DATA" -U "$RUN_AS" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
}

choose_port() {
    local p=$FIRST_PORT
    while port_in_use "$p"; do
        p=$((p + 1))
        [ "$p" -lt $((FIRST_PORT + 100)) ] || die "no free port in $FIRST_PORT..$((FIRST_PORT + 99))"
    done
    echo "$p" > "$DIR/port"
}

wait_ready() {
    local bin; bin=$(bindir)
    for _ in $(seq 1 60); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$(port)" -d "$DB_NAME" -U "$DB_USER" && return 0
        sleep 0.5
    done
    tail -n 30 "$LOG" >&2 || true
    die "the server did not become ready on 127.0.0.1:$(port)"
}

ensure_user_and_db() {
    local pw; pw=$(password)
    if [ "$(psql_super -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != "1" ]; then
        psql_super -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$pw'" >/dev/null
    else
        psql_super -c "ALTER ROLE $DB_USER LOGIN PASSWORD '$pw'" >/dev/null
    fi
    if [ "$(psql_super -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
        psql_super -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
    fi
}

cmd_start() {
    install_postgres
    local bin; bin=$(bindir)
    init_cluster
    if running; then
        say "already running on 127.0.0.1:$(port) ($DATA)"
    else
        choose_port
        : > "$LOG"
        [ "$RUN_AS" = "$(id -un)" ] || chown "$RUN_AS" "$LOG"
        as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $(port) -c unix_socket_directories=$SOCK" start >/dev/null \
            || { tail -n 30 "$LOG" >&2; die "pg_ctl start failed (log: $LOG)"; }
        say "started on 127.0.0.1:$(port) ($DATA)"
    fi
    ensure_user_and_db
    wait_ready
    if ! python3 -c "import psycopg2" >/dev/null 2>&1; then
        say "warning: python3 cannot import psycopg2; pip install psycopg2-binary (in the dev extras)"
    fi
}

cmd_stop() {
    if running; then
        as_owner "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        say "stopped"
    else
        say "not running"
    fi
}

cmd_url() {
    [ -s "$DIR/password" ] && [ -s "$DIR/port" ] || die "no server yet: run scripts/postgres.sh start"
    echo "postgresql+psycopg2://$DB_USER:$(password)@127.0.0.1:$(port)/$DB_NAME"
}

cmd_status() {
    if running; then
        echo "running on 127.0.0.1:$(port), data in $DATA"
        echo "url: $(cmd_url)"
    else
        echo "not running (data dir $DATA)"
        return 3
    fi
}

cmd_purge() {
    cmd_stop
    rm -rf "$DIR"
    say "removed $DIR"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    url) cmd_url ;;
    status) cmd_status ;;
    purge) cmd_purge ;;
    *) echo "usage: $0 {start|stop|url|status|purge}" >&2; exit 2 ;;
esac

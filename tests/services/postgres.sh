#!/usr/bin/env bash
# A throwaway PostgreSQL server for the RDB storage test: its own cluster in DIR, on a free loopback port,
# run by a non-root user (PostgreSQL refuses root: as root, the `postgres` user Debian's package creates).
#   tests/services/postgres.sh start [DIR]   prints the database URL; a second start finds it running
#   tests/services/postgres.sh stop  [DIR]   stops the server this script started in DIR, nothing else
# Exit 77 (the test skips) where there is no PostgreSQL and `apt-get install postgresql` cannot run.
set -euo pipefail
action=${1:-start}
dir=${2:-/tmp/sft_exp_postgres}
db_user=sft_exp

find_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/pg_ctl" ]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
  if [ "$action" = stop ]; then exit 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing postgresql (apt-get)" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1; }; } ||
      { echo "postgresql is not installed and apt-get install postgresql failed" >&2; exit 77; }
    bindir=$(find_bindir || true)
  fi
  if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
    echo "no PostgreSQL server binaries (pg_ctl); install Debian's postgresql package" >&2; exit 77
  fi
fi

if [ "$(id -u)" = 0 ]; then
  owner=postgres
  id "$owner" >/dev/null 2>&1 || { echo "running as root and there is no postgres user to run the server" >&2; exit 77; }
  as_owner() { runuser -u "$owner" -- "$@"; }
else
  owner=$(id -un)
  as_owner() { "$@"; }
fi

data=$dir/data
url_of() { echo "postgresql://$db_user@127.0.0.1:$(cat "$dir/port")/optuna"; }
running() { [ -f "$data/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case $action in
  start)
    if running; then url_of; exit 0; fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    chown "$owner" "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
      as_owner "$bindir/initdb" -D "$data" -U "$db_user" -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$dir/port"
    as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $(cat "$dir/port") -k $dir -c fsync=off" start >/dev/null ||
      { cat "$dir/server.log" >&2; exit 1; }
    touch "$dir/started_here"
    "$bindir/createdb" -h 127.0.0.1 -p "$(cat "$dir/port")" -U "$db_user" optuna 2>/dev/null || true
    url_of
    ;;
  stop)
    if [ -f "$dir/started_here" ] && running; then
      as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
    rm -f "$dir/started_here"
    ;;
  *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac

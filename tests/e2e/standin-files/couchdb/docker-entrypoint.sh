#!/bin/bash
# Stand-in for the official couchdb image's entry point (tests/e2e/standins.py says how the image
# differs): the admin from COUCHDB_USER / COUCHDB_PASSWORD and COUCHDB_SECRET go into
# local.d/docker.ini once, NODENAME into vm.args as `-name couchdb@$NODENAME` (no name otherwise:
# nonode@nohost), COUCHDB_ERLANG_COOKIE into the couchdb user's .erlang.cookie; CouchDB refuses
# to start with no admin. It runs as couchdb from the start (no root entry point and gosu).
set -euo pipefail
etc=/opt/couchdb/etc

if [[ "${1:-}" == /opt/couchdb/bin/couchdb ]]; then
  if [[ -n "${COUCHDB_USER:-}" && -n "${COUCHDB_PASSWORD:-}" ]]; then
    # Once: CouchDB replaces the password by its hash in the same file (a volume keeps it).
    if ! grep -Pzoqs "\[admins\]\n\Q$COUCHDB_USER\E =" "$etc"/local.d/*.ini; then
      printf '\n[admins]\n%s = %s\n' "$COUCHDB_USER" "$COUCHDB_PASSWORD" >>"$etc/local.d/docker.ini"
    fi
  fi
  if [[ -n "${COUCHDB_SECRET:-}" ]] && ! grep -qs '^secret =' "$etc"/local.d/*.ini; then
    printf '\n[chttpd_auth]\nsecret = %s\n' "$COUCHDB_SECRET" >>"$etc/local.d/docker.ini"
  fi
  if [[ -n "${NODENAME:-}" ]] && ! grep -q "couchdb@" "$etc/vm.args"; then
    echo "-name couchdb@$NODENAME" >>"$etc/vm.args"
  fi
  if [[ -n "${COUCHDB_ERLANG_COOKIE:-}" ]]; then
    cookie=/opt/couchdb/.erlang.cookie
    if [[ -e "$cookie" && "$(cat "$cookie")" != "$COUCHDB_ERLANG_COOKIE" ]]; then
      echo "warning: $cookie contents do not match COUCHDB_ERLANG_COOKIE" >&2
    elif [[ ! -e "$cookie" ]]; then
      echo "$COUCHDB_ERLANG_COOKIE" >"$cookie"
    fi
    chmod 600 "$cookie"
  fi
  if ! grep -Pzoqs '\[admins\]\n[^;\n]' "$etc"/local.d/*.ini "$etc"/local.ini; then
    echo 'CouchDB 3.0+ no longer runs in "Admin Party" mode: set COUCHDB_USER and COUCHDB_PASSWORD.' >&2
    exit 1
  fi
fi
exec "$@"

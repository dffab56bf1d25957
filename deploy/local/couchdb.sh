#!/usr/bin/env bash
# Apache CouchDB for the local stack, built once from source into deploy/local/.couchdb (the
# release: bin/couchdb with its own Erlang runtime, about 45 MB), the way Kafka's jars are resolved
# once. Sources: the archives in ../shared/couchdb when they are beside the checkout (see its
# SOURCE.md), else Apache's own source release, checksum verified. Toolchain: Debian's Erlang/OTP 25
# and ICU, installed as root when missing. A new machine builds in about 2 minutes.
#
#   couchdb.sh install     build unless the release of this script's recipe is there
#   couchdb.sh path        print the release folder
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VERSION=3.5.0 # the newest CouchDB that builds with Debian 12's Erlang/OTP 25 (3.5.1 needs OTP 26)
RELEASE="$HERE/.couchdb"
SOURCES="${IOT_COUCHDB_SOURCES:-$(dirname "$REPO")/shared/couchdb}"
APACHE_URL="https://archive.apache.org/dist/couchdb/source/$VERSION/apache-couchdb-$VERSION.tar.gz"
APACHE_SHA256=6a98b90a9a980bbef2c35b4996a8e71a2f1ae5227546c85f04c436101bdf78bf
# What `git clone`s CouchDB's build would make, as archives in $SOURCES (rebar is built apart).
DEPENDENCIES=(snappy ibrowse jiffy mochiweb meck recon fauxton)
PACKAGES=(erlang-nox erlang-dev erlang-reltool erlang-src libicu-dev pkg-config gcc g++ make git curl)

log() { printf 'couchdb: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

toolchain() {
  local missing=() package
  command -v dpkg-query >/dev/null || return 0 # not Debian: configure names what is missing
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  if [[ "$(id -u)" != 0 ]]; then
    die "CouchDB's build needs Debian's ${missing[*]}: sudo apt-get install ${missing[*]}"
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# from_archives DIR: CouchDB's tagged tree with each dependency in src/ and rebar in bin/. The
# build reads its version with `git describe`, so the tree is made a repository with the tag.
from_archives() {
  local dir="$1" name
  tar -xzf "$SOURCES/couchdb-$VERSION.tar.gz" -C "$dir"
  for name in "${DEPENDENCIES[@]}"; do tar -xzf "$SOURCES/$name.tar.gz" -C "$dir/couchdb-$VERSION/src"; done
  tar -xzf "$SOURCES/rebar.tar.gz" -C "$dir"
  make -s -C "$dir/rebar" >/dev/null
  cp "$dir/rebar/rebar" "$dir/couchdb-$VERSION/bin/rebar"
  (
    cd "$dir/couchdb-$VERSION"
    git init -q
    git add -A
    git -c user.name=build -c user.email=build@localhost commit -qm "CouchDB $VERSION"
    git tag "$VERSION"
  )
  echo "$dir/couchdb-$VERSION"
}

# from_apache DIR: Apache's source release, which bundles the dependencies.
from_apache() {
  local dir="$1" archive="$1/apache-couchdb-$VERSION.tar.gz"
  log "downloading $APACHE_URL"
  curl -fsSL --retry 3 -o "$archive" "$APACHE_URL"
  echo "$APACHE_SHA256  $archive" | sha256sum -c --quiet - || die "$archive does not have the published SHA-256"
  tar -xzf "$archive" -C "$dir"
  echo "$dir/apache-couchdb-$VERSION"
}

build() ( # a subshell: its EXIT trap removes the build folder, also after a failure
  local work tree
  work="$(mktemp -d "$HERE/.couchdb-build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  if [[ -f "$SOURCES/couchdb-$VERSION.tar.gz" ]]; then
    log "building CouchDB $VERSION from $SOURCES"
    tree="$(from_archives "$work")"
  else
    log "building CouchDB $VERSION from Apache's source release"
    tree="$(from_apache "$work")"
  fi
  (
    cd "$tree"
    # rebar3 and erlfmt only format the code; the rebar in bin/ builds it. No docs, no web UI
    # (Fauxton needs a browser build), and QuickJS (vendored) as the JavaScript engine.
    export REBAR="$tree/bin/rebar" REBAR3=/bin/true ERLFMT=/bin/true
    [[ -x "$REBAR" ]] || unset REBAR
    ./configure --disable-docs --disable-fauxton --skip-deps --without-proper \
      --js-engine=quickjs --disable-spidermonkey >/dev/null
    make release >"$work/build.log" 2>&1 || {
      tail -n 40 "$work/build.log" >&2
      die "make release failed"
    }
  )
  rm -rf "$RELEASE"
  mv "$tree/rel/couchdb" "$RELEASE"
)

install() {
  local recipe
  recipe="$(sha256sum <"${BASH_SOURCE[0]}")"
  if [[ -x "$RELEASE/bin/couchdb" && "$(cat "$RELEASE/.recipe.sha256" 2>/dev/null)" == "$recipe" ]]; then
    return 0
  fi
  toolchain
  local started=$SECONDS
  build
  echo "$recipe" >"$RELEASE/.recipe.sha256"
  log "built $RELEASE in $((SECONDS - started)) s"
}

case "${1:-}" in
  install) install ;;
  path) echo "$RELEASE" ;;
  *)
    echo "usage: $0 install|path" >&2
    exit 2
    ;;
esac

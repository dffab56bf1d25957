#!/usr/bin/env bash
# The no-Docker local stack for `make run` and `make test`: ZooKeeper, a Kafka broker (ZooKeeper
# mode, as on VM2) and PouchDB Server (a CouchDB-API server), each a background process with a
# pid file and a log under the run dir.
#
#   stack.sh install | start | stop | status | clean
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN_DIR="${IOT_LOCAL_RUN_DIR:-$REPO/.run/local}"
ZK_PORT="${IOT_LOCAL_ZOOKEEPER_PORT:-2181}"
KAFKA_PORT="${IOT_LOCAL_KAFKA_PORT:-9092}"
COUCH_PORT="${IOT_LOCAL_COUCHDB_PORT:-5984}"
COUCH_USER="${IOT_LOCAL_COUCHDB_USER:-admin}"
COUCH_PASSWORD="${IOT_LOCAL_COUCHDB_PASSWORD:-local-dev-only}"
LIBS="$HERE/.kafka/libs"
START_TIMEOUT="${IOT_LOCAL_START_TIMEOUT:-120}"

log() { printf 'stack: %s\n' "$*" >&2; }

install() {
  # Re-resolve the jars only when pom.xml changed since the last copy.
  if [[ ! -f "$LIBS/.pom.sha256" ]] || ! sha256sum --status -c "$LIBS/.pom.sha256" 2>/dev/null; then
    log "resolving Kafka's jars from Maven Central"
    rm -rf "$LIBS"
    mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS" -DincludeScope=runtime
    (cd "$HERE" && sha256sum pom.xml) | sed "s|pom.xml|$HERE/pom.xml|" >"$LIBS/.pom.sha256"
  fi
  if [[ ! -x "$HERE/node_modules/.bin/pouchdb-server" ]] || [[ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]]; then
    log "installing PouchDB Server from npm"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

pid_of() { cat "$RUN_DIR/$1.pid" 2>/dev/null || true; }

running() {
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME CHECK...: poll CHECK until it succeeds, the process dies, or the deadline passes.
wait_for() {
  local name="$1"
  shift
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@"; do
    if ! running "$name"; then
      log "$name exited; last lines of $RUN_DIR/$name.log:"
      tail -n 40 "$RUN_DIR/$name.log" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name not ready after ${START_TIMEOUT}s; last lines of $RUN_DIR/$name.log:"
      tail -n 40 "$RUN_DIR/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

launch() { # launch NAME COMMAND...: start in the background, detached, logging to NAME.log
  local name="$1"
  shift
  nohup "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

launch_java() { # launch_java NAME MAIN ARGS...: a JVM sized to leave room for PyTorch
  local name="$1"
  shift
  launch "$name" java -Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$HERE/log4j.properties" -Diot.log.file="$RUN_DIR/$name.log" \
    -cp "$LIBS/*" "$@"
}

start_zookeeper() {
  mkdir -p "$RUN_DIR/zookeeper"
  cat >"$RUN_DIR/zookeeper.properties" <<PROPS
dataDir=$RUN_DIR/zookeeper
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok
PROPS
  launch_java zookeeper org.apache.zookeeper.server.quorum.QuorumPeerMain "$RUN_DIR/zookeeper.properties"
  wait_for zookeeper zookeeper_ok
}

zookeeper_ok() {
  local answer
  answer="$( (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf 'ruok' >&3 && timeout 2 cat <&3) 2>/dev/null || true)"
  [[ "$answer" == imok ]]
}

start_kafka() {
  mkdir -p "$RUN_DIR/kafka-logs"
  cat >"$RUN_DIR/server.properties" <<PROPS
broker.id=0
zookeeper.connect=127.0.0.1:$ZK_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
log.dirs=$RUN_DIR/kafka-logs
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
# Topics are created on purpose (iot-topics); a typo in a topic name must fail, not create one.
auto.create.topics.enable=false
# One broker, no one else to wait for: let a consumer group form at once.
group.initial.rebalance.delay.ms=0
PROPS
  launch_java kafka kafka.Kafka "$RUN_DIR/server.properties"
  wait_for kafka kafka_ok
}

kafka_ok() { port_open "$KAFKA_PORT" && grep -q 'started (kafka.server.KafkaServer)' "$RUN_DIR/kafka.log"; }

start_couchdb() {
  mkdir -p "$RUN_DIR/couchdb"
  # PouchDB Server hashes the password into this file on start; write it fresh each time.
  printf '{"admins": {"%s": "%s"}, "log": {"file": "%s"}}\n' \
    "$COUCH_USER" "$COUCH_PASSWORD" "$RUN_DIR/couchdb-requests.log" >"$RUN_DIR/couchdb.json"
  launch couchdb "$HERE/node_modules/.bin/pouchdb-server" --host 127.0.0.1 --port "$COUCH_PORT" \
    --dir "$RUN_DIR/couchdb" --config "$RUN_DIR/couchdb.json"
  wait_for couchdb couchdb_ok
}

# Always authenticated: PouchDB Server with an admin crashes on some anonymous requests.
couchdb_ok() { curl -fs -o /dev/null -u "$COUCH_USER:$COUCH_PASSWORD" "http://127.0.0.1:$COUCH_PORT/_all_dbs"; }

start() {
  install
  mkdir -p "$RUN_DIR"
  if running zookeeper && running kafka && running couchdb && kafka_ok && couchdb_ok; then
    log "already running"
  else
    running zookeeper || start_zookeeper
    running kafka || start_kafka
    running couchdb || start_couchdb
  fi
  log "Kafka bootstrap: 127.0.0.1:$KAFKA_PORT"
  log "CouchDB: http://127.0.0.1:$COUCH_PORT (user $COUCH_USER)"
}

stop_one() {
  local name="$1" pid
  pid="$(pid_of "$name")"
  if running "$name"; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 30s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name"
  fi
  rm -f "$RUN_DIR/$name.pid"
}

stop() {
  # Reverse order: the broker deregisters from ZooKeeper before ZooKeeper goes.
  stop_one couchdb
  stop_one kafka
  stop_one zookeeper
}

status() {
  local name
  for name in zookeeper kafka couchdb; do
    if running "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  clean) stop && rm -rf "$RUN_DIR" ;;
  *)
    echo "usage: $0 install|start|stop|status|clean" >&2
    exit 2
    ;;
esac

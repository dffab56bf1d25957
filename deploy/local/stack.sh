#!/usr/bin/env bash
# The no-Docker local stack for `make run` and `make test`: ZooKeeper, Kafka (ZooKeeper mode, as on
# VM2) and Apache CouchDB (built from source by couchdb.sh), each a background process with a pid
# file and a log in the run dir. Kafka may be IOT_LOCAL_KAFKA_BROKERS brokers and CouchDB a cluster
# of IOT_LOCAL_COUCHDB_NODES nodes: broker or node K on 127.0.0.K (kafka, kafka2, ...; couchdb,
# couchdb2, ...), all on the same ports.
#
#   stack.sh install | start [NAME...] | stop [NAME...] | status | clean   (README.md has the settings)
# NAME: zookeeper, kafka or kafkaK, couchdb or couchdbK (default: all of them).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN_DIR="${IOT_LOCAL_RUN_DIR:-$REPO/.run/local}"
[[ "$RUN_DIR" == /* ]] || RUN_DIR="$PWD/$RUN_DIR" # services run from inside it
ZOOKEEPER_PORT="${IOT_LOCAL_ZOOKEEPER_PORT:-2181}"
KAFKA_PORT="${IOT_LOCAL_KAFKA_PORT:-9092}"
KAFKA_BROKERS="${IOT_LOCAL_KAFKA_BROKERS:-1}"
KAFKA_METRICS_PORT="${IOT_LOCAL_KAFKA_METRICS_PORT:-9404}" # each broker's JMX exporter, on its address
# plaintext, or sasl_ssl: TLS with a CA of the run dir's own, SCRAM logins, one user per service
# and ACLs (iot-kafka-access), as the Ansible deployment runs Kafka.
KAFKA_SECURITY="${IOT_LOCAL_KAFKA_SECURITY:-plaintext}"
COUCHDB_PORT="${IOT_LOCAL_COUCHDB_PORT:-5984}"
COUCHDB_METRICS_PORT="${IOT_LOCAL_COUCHDB_METRICS_PORT:-17986}"
COUCHDB_TLS_PORT="${IOT_LOCAL_COUCHDB_TLS_PORT:-6984}" # CouchDB's own TLS, with the run dir's CA
COUCHDB_NODES="${IOT_LOCAL_COUCHDB_NODES:-1}"
COUCHDB_DIST_PORT="${IOT_LOCAL_COUCHDB_DIST_PORT:-9100}" # Erlang distribution between the nodes
COUCH_USER="${IOT_LOCAL_COUCHDB_USER:-admin}"
COUCH_PASSWORD="${IOT_LOCAL_COUCHDB_PASSWORD:-local-dev-only}"
SINK_PASSWORD="${IOT_LOCAL_COUCHDB_SINK_PASSWORD:-local-dev-only}"
READER_PASSWORD="${IOT_LOCAL_COUCHDB_READER_PASSWORD:-local-dev-only}"
SETUP="$REPO/.venv/bin/iot-couchdb-setup"
START_TIMEOUT="${IOT_LOCAL_START_TIMEOUT:-120}"
STOP_TIMEOUT=30
LIBS="$HERE/.kafka/libs"
# The Prometheus JMX exporter, as a Java agent in each broker: not on Kafka's class path (pom.xml's
# execution jmx-exporter names the same version).
JMX_EXPORTER_VERSION=1.0.1
JMX_EXPORTER="$HERE/.kafka/agent/jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar"
JMX_EXPORTER_CONFIG="$REPO/deploy/prometheus/kafka-jmx-exporter.yml"
COUCHDB_RELEASE="$HERE/.couchdb"
TLS="$RUN_DIR/tls"         # ca.pem, and each TLS server's key and certificate in NAME.pem
SECRETS="$RUN_DIR/secrets" # USER/iot_kafka_password: the IOT_SECRETS_DIR of a client logging in as USER
KAFKA_USERS=(admin iot-producer iot-inference iot-sink iot-audit)
ACCESS="$REPO/.venv/bin/iot-kafka-access"
[[ "$KAFKA_SECURITY" == plaintext || "$KAFKA_SECURITY" == sasl_ssl ]] || {
  echo "stack: IOT_LOCAL_KAFKA_SECURITY must be plaintext or sasl_ssl, not '$KAFKA_SECURITY'" >&2
  exit 2
}
[[ "$COUCHDB_NODES" =~ ^[1-9]$ ]] || {
  echo "stack: IOT_LOCAL_COUCHDB_NODES must be 1 to 9 (a cluster keeps 3 copies), not '$COUCHDB_NODES'" >&2
  exit 2
}
[[ "$KAFKA_BROKERS" =~ ^[1-9]$ ]] || {
  echo "stack: IOT_LOCAL_KAFKA_BROKERS must be 1 to 9 (3 keep 3 copies of every record), not '$KAFKA_BROKERS'" >&2
  exit 2
}
# Durability from the broker count, as the Ansible role derives it: every topic (internal ones
# too) on min(3, brokers) replicas, and with 3 or more a write acknowledged by at least 2.
REPLICATION_FACTOR=$((KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3))
MIN_INSYNC_REPLICAS=$((KAFKA_BROKERS < 3 ? 1 : 2))
SERVICES=(zookeeper kafka) # start order; stop goes in reverse
for ((k = 2; k <= KAFKA_BROKERS; k++)); do SERVICES+=("kafka$k"); done
SERVICES+=(couchdb)
for ((k = 2; k <= COUCHDB_NODES; k++)); do SERVICES+=("couchdb$k"); done

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# ---- install ---------------------------------------------------------------------------------

# A stamp holds the sha256 of the file an install came from, so a changed pom/lock reinstalls.
stamp_current() { [[ -f "$2" && "$(cat "$2")" == "$(sha256sum <"$1")" ]]; }

# resolve POM LIBS: the jars POM lists, from Maven Central into LIBS (the folder POM names).
resolve() {
  if ! stamp_current "$1" "$2/.pom.sha256"; then
    log "resolving $(basename "$1")'s jars from Maven Central into $2"
    rm -rf "$2" # no jars of an older version left on the class path
    mvn -q -B -f "$1" dependency:copy-dependencies
    sha256sum <"$1" >"$2/.pom.sha256"
  fi
}

install() {
  resolve "$HERE/pom.xml" "$LIBS"
  if [[ ! -f "$JMX_EXPORTER" ]]; then
    log "resolving the JMX exporter agent $JMX_EXPORTER_VERSION from Maven Central"
    mvn -q -B -f "$HERE/pom.xml" dependency:copy@jmx-exporter
  fi
  # Kafka 4, not run here: what a KRaft deployment installs (the deployment test's release).
  resolve "$HERE/pom-kafka4.xml" "$HERE/.kafka4/libs"
  "$HERE/couchdb.sh" install
}

# ---- processes -------------------------------------------------------------------------------

pid_of() { cat "$RUN_DIR/$1.pid" 2>/dev/null || true; }

# running NAME: the pid file names a live process that is ours (its command line names the run dir),
# not one that reused the pid after a reboot.
running() {
  local pid
  pid="$(pid_of "$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(ps -ww -o args= -p "$pid" 2>/dev/null)" == *"$RUN_DIR"* ]]
}

# alive PID: not gone and not a zombie (an exited service waits for init to reap it).
alive() { [[ "$(ps -o stat= -p "$1" 2>/dev/null)" == [^Z]* ]]; }

port_of() {
  case "$1" in
    zookeeper) echo "$ZOOKEEPER_PORT" ;;
    kafka*) echo "$KAFKA_PORT" ;;
    couchdb*) echo "$COUCHDB_PORT" ;;
  esac
}

# node_of kafkaK|couchdbK: K (kafka and couchdb are 1); ip_of NAME: the loopback address NAME listens on.
node_of() { local k="${1#kafka}"; k="${k#couchdb}"; echo "${k:-1}"; }
ip_of() { if [[ "$1" == zookeeper ]]; then echo 127.0.0.1; else echo "127.0.0.$(node_of "$1")"; fi; }
bootstrap() { # every broker, separated by commas: IOT_KAFKA_BOOTSTRAP_SERVERS of the services
  local k servers="127.0.0.1:$KAFKA_PORT"
  for ((k = 2; k <= KAFKA_BROKERS; k++)); do servers+=",127.0.0.$k:$KAFKA_PORT"; done
  echo "$servers"
}
couch_url() { echo "http://$(ip_of "$1"):$COUCHDB_PORT"; } # couch_url NAME
couch_tls_url() { echo "https://$(ip_of "$1"):$COUCHDB_TLS_PORT"; }
couch_node_name() { echo "couchdb-$COUCHDB_PORT@$(ip_of "$1")"; } # its Erlang node name
couch_urls() { # every node's URL, separated by commas: IOT_COUCHDB_URL of the services
  local k urls="$(couch_url couchdb)"
  for ((k = 2; k <= COUCHDB_NODES; k++)); do urls+=",$(couch_url "couchdb$k")"; done
  echo "$urls"
}

port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; } # port_open PORT [IP]

# port_free PORT [IP]: true once nothing listens on PORT. A process killed with -9 (a JVM above all)
# can hold its port for a few seconds while the kernel tears it down, so wait a little first.
port_free() {
  local deadline=$((SECONDS + 15))
  while port_open "$1" "${2:-127.0.0.1}"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Health checks, polled by wait_for; each returns at once.
zk_4lw() { # zk_4lw WORD: ZooKeeper's answer to a four-letter word (whitelisted in zookeeper.properties)
  (exec 3<>"/dev/tcp/127.0.0.1/$ZOOKEEPER_PORT" && printf '%s' "$1" >&3 && timeout 2 cat <&3) 2>/dev/null || true
}
zookeeper_ok() { [[ "$(zk_4lw ruok)" == imok ]]; }
broker_id() { echo $(($(node_of "$1") - 1)); } # broker_id kafkaK: K-1 (kafka is broker 0)
broker_registered() { [[ "$(zk_4lw dump)" == *"/brokers/ids/$(broker_id "$1")"* ]]; }
kafka_ok() { # kafka_ok NAME: the port opens before the broker serves; the log line comes after it does
  port_open "$KAFKA_PORT" "$(ip_of "$1")" && grep -q 'started (kafka.server.KafkaServer)' "$RUN_DIR/$1.log" 2>/dev/null
}
couch_node_ok() { # couch_node_ok NAME: /_up answers once it serves; the admin's request proves the ini took
  curl -fs -m 5 -o /dev/null "$(couch_url "$1")/_up" &&
    curl -fs -m 5 -o /dev/null -u "$COUCH_USER:$COUCH_PASSWORD" "$(couch_url "$1")/_all_dbs" &&
    curl -fs -m 5 -o /dev/null --cacert "$TLS/ca.pem" "$(couch_tls_url "$1")/_up"
}
ok() { # ok NAME: NAME's health check
  case "$1" in
    couchdb*) couch_node_ok "$1" ;;
    kafka*) kafka_ok "$1" ;;
    zookeeper) zookeeper_ok ;;
  esac
}

show_log() {
  log "last lines of $RUN_DIR/$1.log:"
  tail -n 40 "$RUN_DIR/$1.log" >&2 || true
}

# wait_for NAME: poll NAME's health check until it passes, the process dies, or the deadline passes.
# Only after `start` launched NAME or found it running, so the pid is ours: `alive`, not `running`,
# since a process just launched may not have exec'd into the command line that names the run dir
# yet (CouchDB's start script runs a while before its Erlang VM).
wait_for() {
  local name="$1" deadline=$((SECONDS + START_TIMEOUT))
  until ok "$name"; do
    if ! alive "$(pid_of "$name")"; then
      log "$name exited"
      show_log "$name"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name not ready after ${START_TIMEOUT}s"
      show_log "$name"
      return 1
    fi
    sleep 0.2 # poll interval
  done
}

# launch NAME COMMAND...: run detached in its own session (a Ctrl-C or closed terminal in the
# caller does not reach it), from the run dir, logging to a fresh NAME.log (the last one kept as .1).
launch() {
  local name="$1"
  shift
  [[ -f "$RUN_DIR/$name.log" ]] && mv -f "$RUN_DIR/$name.log" "$RUN_DIR/$name.log.1"
  (cd "$RUN_DIR" && exec setsid "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null) &
  echo $! >"$RUN_DIR/$name.pid"
}

# launch_java NAME HEAP MAIN ARGS...: a small JVM, to leave room for PyTorch; JVM_OPTS (a variable
# of the caller) adds options before the class path.
launch_java() {
  local name="$1" heap="$2"
  shift 2
  # shellcheck disable=SC2086 # JVM_OPTS holds several words on purpose
  launch "$name" java "-Xmx$heap" -Xms64m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true ${JVM_OPTS:-} \
    -Dlog4j.configuration="file:$HERE/log4j.properties" -Diot.log.file="$RUN_DIR/$name.log" \
    -cp "$LIBS/*" "$@"
}

launch_zookeeper() {
  mkdir -p "$RUN_DIR/zookeeper"
  cat >"$RUN_DIR/zookeeper.properties" <<PROPS
dataDir=$RUN_DIR/zookeeper
clientPort=$ZOOKEEPER_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
# Sessions may be as short as 2 ticks: the brokers ask for 4 s (below).
tickTime=2000
4lw.commands.whitelist=ruok,dump
PROPS
  launch_java zookeeper 256m org.apache.zookeeper.server.quorum.QuorumPeerMain "$RUN_DIR/zookeeper.properties"
}

launch_kafka() { # launch_kafka NAME: broker NAME (kafka or kafkaK) on 127.0.0.K
  local name="$1" ip id
  ip="$(ip_of "$name")" id="$(broker_id "$name")"
  mkdir -p "$RUN_DIR/$name-logs"
  (umask 077 && : >"$RUN_DIR/$name.properties") # it may hold the admin's password
  cat >"$RUN_DIR/$name.properties" <<PROPS
broker.id=$id
zookeeper.connect=127.0.0.1:$ZOOKEEPER_PORT
$(listener_properties "$name")
log.dirs=$RUN_DIR/$name-logs
num.partitions=3
default.replication.factor=$REPLICATION_FACTOR
offsets.topic.replication.factor=$REPLICATION_FACTOR
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$REPLICATION_FACTOR
transaction.state.log.min.isr=$MIN_INSYNC_REPLICAS
min.insync.replicas=$MIN_INSYNC_REPLICAS
# Only an in-sync replica may lead: an out-of-date one would drop acknowledged records.
unclean.leader.election.enable=false
# Topics are created on purpose (iot_shared.topics); a typo in a topic name must fail, not create one.
auto.create.topics.enable=false
# A killed broker's registration outlives it by this long (a restarted one waits for that), and
# only then does the controller move its partitions to the others: the stall of a cluster that
# lost a broker. ZooKeeper's shortest (2 ticks).
zookeeper.session.timeout.ms=4000
# No other member to wait for: let a consumer group form at once.
group.initial.rebalance.delay.ms=0
PROPS
  # A killed broker's registration (an ephemeral node) outlives it until its ZooKeeper session
  # expires (zookeeper.session.timeout.ms); a new broker with the same id exits on finding it, so wait it out.
  local deadline=$((SECONDS + START_TIMEOUT))
  if broker_registered "$name"; then
    log "waiting for the last $name's ZooKeeper session to expire"
    while broker_registered "$name"; do
      ((SECONDS < deadline)) || die "broker $id still registered in ZooKeeper after ${START_TIMEOUT}s"
      sleep 0.5
    done
  fi
  JVM_OPTS="-javaagent:$JMX_EXPORTER=$ip:$KAFKA_METRICS_PORT:$JMX_EXPORTER_CONFIG" \
    launch_java "$name" 512m kafka.Kafka "$RUN_DIR/$name.properties"
}

listener_properties() { # listener_properties NAME: broker NAME's listener, and its security
  local ip protocol=PLAINTEXT
  ip="$(ip_of "$1")"
  [[ "$KAFKA_SECURITY" == sasl_ssl ]] && protocol=SASL_SSL
  echo "listeners=$protocol://$ip:$KAFKA_PORT"
  echo "advertised.listeners=$protocol://$ip:$KAFKA_PORT"
  [[ "$KAFKA_SECURITY" == sasl_ssl ]] || return 0
  cat <<PROPS
security.inter.broker.protocol=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(password admin)";
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/$1.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
# Whatever no ACL allows is denied; the admin (the brokers themselves, and iot-kafka-access) may do all.
authorizer.class.name=kafka.security.authorizer.AclAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
PROPS
}

# password USER: USER's Kafka password, made once (mode 0400, in a folder of its own, 0700).
password() {
  local file="$SECRETS/$1/iot_kafka_password"
  if [[ ! -s "$file" ]]; then
    (umask 077 && mkdir -p "$SECRETS/$1" && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$file")
    chmod 0400 "$file"
  fi
  cat "$file"
}

# make_tls: a CA of the run dir's own, and a key and certificate for each TLS server (CouchDB's
# nodes; the brokers with SASL_SSL), for its address.
make_tls() {
  local name ip
  (umask 077 && mkdir -p "$TLS")
  if [[ ! -s "$TLS/ca.pem" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=IoT pipeline local CA" \
      -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
  fi
  for name in "${SERVICES[@]}"; do
    [[ "$name" == couchdb* || ("$name" == kafka* && "$KAFKA_SECURITY" == sasl_ssl) ]] || continue
    [[ ! -s "$TLS/$name.pem" ]] || continue
    ip="$(ip_of "$name")"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$TLS/$name.key" -out "$TLS/$name.csr" 2>/dev/null
    openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial -days 825 \
      -extfile <(echo "subjectAltName=IP:$ip") -out "$TLS/$name.crt" 2>/dev/null
    cat "$TLS/$name.key" "$TLS/$name.crt" >"$TLS/$name.pem"
    rm -f "$TLS/$name.csr" "$TLS/$name.key" "$TLS/$name.crt"
  done
}

# scram_admin: the admin's SCRAM login, written into ZooKeeper before a broker starts (the brokers
# log in to each other as the admin); once per ZooKeeper data dir.
scram_admin() {
  local done="$RUN_DIR/zookeeper/.iot-admin-scram"
  [[ -f "$done" ]] && return 0
  java -Xmx128m -Dlog4j.configuration="file:$HERE/log4j.properties" -Diot.log.file="$RUN_DIR/tools.log" \
    -cp "$LIBS/*" kafka.admin.ConfigCommand --zookeeper "127.0.0.1:$ZOOKEEPER_PORT" --alter \
    --entity-type users --entity-name admin \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$(password admin)]" >>"$RUN_DIR/tools.log" 2>&1 ||
    die "could not write the admin's SCRAM login into ZooKeeper (see $RUN_DIR/tools.log)"
  touch "$done"
}

# kafka_access: each service's user and its ACLs (iot-kafka-access, as the admin).
kafka_access() {
  local user role
  for user in "${KAFKA_USERS[@]:1}"; do
    role="${user#iot-}"
    password "$user" >/dev/null
    command install -m 0400 "$SECRETS/$user/iot_kafka_password" "$SECRETS/admin/iot_kafka_${role}_password"
  done
  IOT_KAFKA_BOOTSTRAP_SERVERS="$(bootstrap)" IOT_SECRETS_DIR="$SECRETS/admin" IOT_LOG_LEVEL=WARNING \
    "$ACCESS" --kafka-security-protocol SASL_SSL --kafka-username admin --kafka-ca-file "$TLS/ca.pem" ||
    die "iot-kafka-access failed against the local brokers"
}

# once FILE: a random token kept in the run dir, the same for every node of the cluster.
once() {
  [[ -s "$RUN_DIR/$1" ]] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$RUN_DIR/$1"
  cat "$RUN_DIR/$1"
}

launch_couchdb() { # launch_couchdb NAME: node NAME (couchdb or couchdbK) of the CouchDB cluster
  local name="$1" ip data="$RUN_DIR/$1"
  ip="$(ip_of "$name")"
  mkdir -p "$data"
  # CouchDB hashes the admin's password into the last ini file it was given, so that file is
  # the run dir's own, written fresh each start. The nodes of a cluster share uuid and secret.
  cat >"$RUN_DIR/$name.ini" <<INI
[couchdb]
database_dir = $data
view_index_dir = $data
uuid = $(once couchdb.uuid)
single_node = $( ((COUCHDB_NODES == 1)) && echo true || echo false)
[cluster]
n = $((COUCHDB_NODES < 3 ? COUCHDB_NODES : 3))
[chttpd]
bind_address = $ip
port = $COUCHDB_PORT
[chttpd_auth]
secret = $(once couchdb.secret)
[ssl]
enable = true
port = $COUCHDB_TLS_PORT
cert_file = $TLS/$name.pem
key_file = $TLS/$name.pem
[prometheus]
additional_port = true
bind_address = $ip
port = $COUCHDB_METRICS_PORT
[admins]
$COUCH_USER = $COUCH_PASSWORD
INI
  # Erlang distribution without epmd (no daemon outlives the stack, and private stacks beside
  # this one cannot clash on a node name): one node needs no peers, so it listens on any port;
  # the nodes of a cluster each listen on their own address, all on COUCHDB_DIST_PORT, where
  # they find each other.
  sed -e "s/^-name .*/-name $(couch_node_name "$name")/" "$COUCHDB_RELEASE/etc/vm.args" >"$RUN_DIR/$name.vm.args"
  printf '%s\n' "-setcookie $(once couchdb.cookie)" "-start_epmd false" >>"$RUN_DIR/$name.vm.args"
  if ((COUCHDB_NODES == 1)); then
    echo "-erl_epmd_port 0" >>"$RUN_DIR/$name.vm.args"
  else
    printf '%s\n' "-erl_epmd_port $COUCHDB_DIST_PORT" "-kernel inet_dist_use_interface {${ip//./,}}" \
      >>"$RUN_DIR/$name.vm.args"
  fi
  COUCHDB_ARGS_FILE="$RUN_DIR/$name.vm.args" COUCHDB_INI_FILES="$COUCHDB_RELEASE/etc/default.ini $RUN_DIR/$name.ini" \
    launch "$name" "$COUCHDB_RELEASE/bin/couchdb"
}

# The nodes join node 1's cluster (CouchDB's manual cluster setup: a document per node in
# _nodes), which then makes the system databases; idempotent (409 and 412: already done).
join_couchdb_cluster() {
  local k admin=(-u "$COUCH_USER:$COUCH_PASSWORD") url db
  url="$(couch_url couchdb)"
  for ((k = 2; k <= COUCHDB_NODES; k++)); do
    curl -s -m 10 -o /dev/null -w '%{http_code}' "${admin[@]}" -X PUT -d '{}' \
      "$url/_node/_local/_nodes/$(couch_node_name "couchdb$k")" | grep -qE '^(201|202|409)$' ||
      die "couchdb$k could not join the cluster of $url"
  done
  local deadline=$((SECONDS + START_TIMEOUT))
  until [[ "$(curl -s -m 5 "${admin[@]}" "$url/_membership" |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(len(set(m["all_nodes"]) & set(m["cluster_nodes"])))')" == "$COUCHDB_NODES" ]]; do
    ((SECONDS < deadline)) || die "the CouchDB nodes did not connect within ${START_TIMEOUT}s ($url/_membership)"
    sleep 0.2
  done
  for db in _users _replicator; do
    curl -s -m 30 -o /dev/null -w '%{http_code}' "${admin[@]}" -X PUT "$url/$db" | grep -qE '^(201|202|412)$' ||
      die "could not make $db on the CouchDB cluster"
  done
}

# The pipeline's database and least-privilege users (iot_sink writes, iot_reader reads), made by
# the project's own idempotent command as the server admin, which stays with the stack.
setup_couchdb() {
  if [[ ! -x "$SETUP" ]]; then
    log "no $SETUP yet (make install makes it): CouchDB has no pipeline users"
    return 0
  fi
  IOT_COUCHDB_URL="$(couch_urls)" IOT_COUCHDB_USER="$COUCH_USER" \
    IOT_COUCHDB_PASSWORD="$COUCH_PASSWORD" IOT_COUCHDB_SINK_PASSWORD="$SINK_PASSWORD" \
    IOT_COUCHDB_READER_PASSWORD="$READER_PASSWORD" IOT_LOG_LEVEL=WARNING "$SETUP" ||
    die "iot-couchdb-setup failed against the local CouchDB"
}

# ---- commands --------------------------------------------------------------------------------

healthy() { running "$1" && ok "$1"; }

# start [NAME...]: the named servers (all by default, in start order) that are not running. Once
# node 1 of CouchDB is among them, the nodes form their cluster and the pipeline's database and
# users are made (both idempotent).
start() {
  install
  mkdir -p "$RUN_DIR"
  local name kind ip port started=0 names=("$@")
  ((${#names[@]})) || names=("${SERVICES[@]}")
  for name in "${names[@]}"; do
    if ! running "$name"; then
      port="$(port_of "$name")" ip="$(ip_of "$name")"
      kind="${name%%[0-9]*}"
      port_free "$port" "$ip" || die "port $ip:$port is taken by another process; stop it or set IOT_LOCAL_${kind^^}_PORT"
      log "starting $name on $ip:$port"
      case "$name" in
        couchdb*)
          port_free "$COUCHDB_METRICS_PORT" "$ip" ||
            die "port $ip:$COUCHDB_METRICS_PORT is taken by another process; stop it or set IOT_LOCAL_COUCHDB_METRICS_PORT"
          port_free "$COUCHDB_TLS_PORT" "$ip" ||
            die "port $ip:$COUCHDB_TLS_PORT is taken by another process; stop it or set IOT_LOCAL_COUCHDB_TLS_PORT"
          make_tls
          launch_couchdb "$name"
          ;;
        kafka*)
          port_free "$KAFKA_METRICS_PORT" "$ip" ||
            die "port $ip:$KAFKA_METRICS_PORT is taken by another process; stop it or set IOT_LOCAL_KAFKA_METRICS_PORT"
          if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then
            make_tls
            scram_admin
          fi
          launch_kafka "$name"
          ;;
        zookeeper) launch_zookeeper ;;
      esac
      started=1
    fi
    wait_for "$name" || die "$name did not start; \`$0 stop\` stops what did"
  done
  if [[ "$KAFKA_SECURITY" == sasl_ssl && " ${names[*]} " == *" kafka "* ]]; then
    kafka_access
  fi
  if [[ " ${names[*]} " == *" couchdb "* ]]; then
    ((COUCHDB_NODES == 1)) || join_couchdb_cluster
    setup_couchdb
  fi
  ((started)) || log "already running and healthy"
  if (($# == 0)); then
    echo "Kafka bootstrap servers: $(bootstrap)"
    if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then
      echo "Kafka logins (SASL_SSL): IOT_KAFKA_SECURITY_PROTOCOL=SASL_SSL IOT_KAFKA_CA_FILE=$TLS/ca.pem" \
        "IOT_KAFKA_USERNAME=USER IOT_SECRETS_DIR=$SECRETS/USER, USER one of ${KAFKA_USERS[*]}"
    fi
    echo "Kafka's metrics: http://127.0.0.1:$KAFKA_METRICS_PORT/metrics (each broker on its address)"
    echo "CouchDB: $(couch_urls) (server admin $COUCH_USER; the sink logs in as iot_sink, readers as iot_reader)"
    echo "CouchDB over TLS: $(couch_tls_url couchdb) (IOT_COUCHDB_CA_FILE=$TLS/ca.pem; each node on its address)"
    echo "CouchDB's metrics: http://127.0.0.1:$COUCHDB_METRICS_PORT/_node/_local/_prometheus (each node on its address)"
    echo "Logs: $RUN_DIR/{zookeeper,kafka*,couchdb*}.log"
  fi
}

stop_one() {
  local name="$1" pid deadline
  pid="$(pid_of "$name")"
  if running "$name"; then
    kill -TERM "$pid"
    deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      log "$name did not stop in ${STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name"
  fi
  rm -f "$RUN_DIR/$name.pid"
}

# stop [NAME...]: the named servers (all by default), in reverse start order whatever order they are
# named in: a broker shuts down cleanly only while ZooKeeper is still there.
stop() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    if (($# == 0)) || [[ " $* " == *" ${SERVICES[i]} "* ]]; then stop_one "${SERVICES[i]}"; fi
  done
}

status() { # exit 0 when all are running and answering, 3 otherwise
  local name all=0
  for name in "${SERVICES[@]}"; do
    if healthy "$name"; then
      echo "$name: running (pid $(pid_of "$name"), $(ip_of "$name"):$(port_of "$name"))"
    elif running "$name"; then
      echo "$name: running (pid $(pid_of "$name")) but not answering on $(ip_of "$name"):$(port_of "$name")"
      all=3
    else
      echo "$name: stopped"
      all=3
    fi
  done
  return "$all"
}

clean() {
  stop
  # Guard against a run dir that points somewhere precious.
  if [[ "$RUN_DIR" == / || "$RUN_DIR" == "$REPO" || "$RUN_DIR" == "${HOME:-}" ]]; then
    die "refusing to delete $RUN_DIR"
  fi
  rm -rf "$RUN_DIR"
  log "removed $RUN_DIR"
}

known() { # known NAME...: each is one of SERVICES
  local name
  for name in "$@"; do
    [[ " ${SERVICES[*]} " == *" $name "* ]] || die "unknown server $name (one of: ${SERVICES[*]})"
  done
}

command="${1:-}"
shift || true
case "$command" in
  start | stop)
    known "$@"
    "$command" "$@"
    ;;
  install | status | clean) "$command" ;;
  *)
    echo "usage: $0 install|start [NAME...]|stop [NAME...]|status|clean" >&2
    exit 2
    ;;
esac

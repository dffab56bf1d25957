#!/bin/bash
# secure-files.sh FOLDER: what `make up SECURE=1` mounts (compose.secure.yaml), made on first use
# in FOLDER (SECRETS_DIR), kept afterwards:
#   ca.pem, ca.key            a CA of this stack's own (the key never leaves FOLDER)
#   kafka.pem, couchdb.pem    each server's key (unencrypted: no password to hand over) and its
#                             certificate for its service name and localhost, signed by that CA
#   kafka_<user>_password     the SCRAM passwords of admin and the pipeline's users
#   kafka_server_jaas.conf    the broker's own login (admin), from admin's password
#   kafka_admin.properties    admin's client login, for the broker's health check
# Files are 0644 (docker-compose v1 bind-mounts them as they are; the containers' users read
# them) in a folder only its owner enters (0700); ca.key is 0600 and never mounted.
set -euo pipefail

folder="${1:?usage: secure-files.sh SECRETS_DIR}"
USERS=(admin producer inference sink audit)

mkdir -p "$folder"
chmod 700 "$folder"
cd "$folder"
umask 022

random() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

for user in "${USERS[@]}"; do
  [[ -s "kafka_${user}_password" ]] || random >"kafka_${user}_password"
done

if [[ ! -s ca.pem ]]; then
  (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=IoT pipeline Compose CA" \
    -keyout ca.key -out ca.pem 2>/dev/null)
  rm -f kafka.pem couchdb.pem  # signed by a CA that is gone
fi

# The keys are made here first, and removed however the script ends.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# server_cert NAME: NAME.pem, NAME's key and a certificate for NAME (its Compose service name),
# localhost and 127.0.0.1, signed by the CA; kept once made.
server_cert() {
  local name="$1"
  [[ -s "$name.pem" ]] && return
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
  openssl x509 -req -in "$work/$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -CAserial "$work/ca.srl" \
    -days 825 -extfile <(echo "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1") \
    -out "$work/$name.crt" 2>/dev/null
  cat "$work/$name.key" "$work/$name.crt" >"$name.pem"
}
server_cert kafka
server_cert couchdb
chmod 644 ca.pem kafka.pem couchdb.pem

admin="$(cat kafka_admin_password)"
login="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$admin\""
cat >kafka_server_jaas.conf <<JAAS
KafkaServer {
  $login;
};
JAAS
cat >kafka_admin.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$login;
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/secrets/ca.pem
PROPS

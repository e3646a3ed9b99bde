#!/bin/sh
# Entry point of complement/Dockerfile: sign a federation certificate for
# $SERVER_NAME with Complement's CA, then run Plait on 8008/8448.
set -eu
: "${SERVER_NAME:?Complement sets SERVER_NAME}"
ca=/complement/ca
host="${SERVER_NAME%%:*}"
openssl genrsa -out /conf/server.key 2048 2>/dev/null
openssl req -new -key /conf/server.key -subj "/CN=$host" -out /conf/server.csr
printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' "$host" >/conf/ext.cnf
openssl x509 -req -in /conf/server.csr -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
  -days 7 -sha256 -extfile /conf/ext.cnf -out /conf/server.crt 2>/dev/null
cat "$ca/ca.crt" >>/conf/server.crt

export PLAIT_SERVER_NAME="$SERVER_NAME"
export PLAIT_LISTEN=0.0.0.0:8008
export PLAIT_FEDERATION_LISTEN=0.0.0.0:8448
export PLAIT_DATABASE_PATH=/data
export PLAIT_REGISTRATION=open
# Complement registers, logs in and sends from one address as fast as it can.
export PLAIT_RATE_LIMITS_ENABLED=false
export PLAIT_TLS_CERT=/conf/server.crt
export PLAIT_TLS_KEY=/conf/server.key
export PLAIT_FEDERATION_CA_FILE="$ca/ca.crt"
# Complement's containers and its own servers talk over a private Docker network (and
# host.docker.internal), which the default ip_range_denylist refuses.
export PLAIT_IP_RANGE_ALLOWLIST='["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16","127.0.0.0/8","::1/128","fc00::/7"]'
export PLAIT_REGISTRATION_SHARED_SECRET=complement
export RUST_LOG="${RUST_LOG:-info}"
exec /usr/local/bin/plait "$@"

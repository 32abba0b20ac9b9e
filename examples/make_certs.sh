#!/usr/bin/env bash
# Makes the private CA of one training run and a certificate per pipeline stage, for
# resbm's mutual TLS (docs/security.md):
#
#   examples/make_certs.sh DIR STAGES [DAYS]
#
#   DIR/ca.crt                 the run's CA certificate: give it to every stage (--tls-ca)
#   DIR/ca.key                 the CA's private key: keep it off the training machines
#   DIR/stage-K.crt, .key      stage K's certificate (CN=resbm-stage-K) and key, K = 0..STAGES-1:
#                              copy each pair only to the machine that runs stage K
#
# Keys are ECDSA P-256, certificates are valid for DAYS (default 30) and usable both as
# TLS server and client (every stage listens for one neighbour and connects to another).
# A stage accepts a peer only if its certificate is signed by this CA and its CN matches
# the stage it claims to be.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 DIR STAGES [DAYS]" >&2
  exit 2
fi
dir=$1 stages=$2 days=${3:-30}
if ! [[ "$stages" =~ ^[1-9][0-9]*$ ]]; then
  echo "make_certs.sh: STAGES must be a positive integer, got '$stages'" >&2
  exit 2
fi
if ! [[ "$days" =~ ^[1-9][0-9]*$ ]]; then
  echo "make_certs.sh: DAYS must be a positive integer, got '$days'" >&2
  exit 2
fi
if ! command -v openssl >/dev/null; then
  echo "make_certs.sh: the openssl command is missing (fix: apt-get install openssl)" >&2
  exit 1
fi

mkdir -p "$dir"
umask 077  # private keys readable by their owner only
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key"
openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" -subj "/CN=resbm run CA" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" \
  -out "$dir/ca.crt"

cat >"$tmp/leaf.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT

for ((k = 0; k < stages; k++)); do
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/stage-$k.key"
  openssl req -new -key "$dir/stage-$k.key" -subj "/CN=resbm-stage-$k" -out "$tmp/stage-$k.csr"
  # A random serial per certificate: no serial file to keep next to the CA key.
  openssl x509 -req -in "$tmp/stage-$k.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" -extfile "$tmp/leaf.ext" \
    -out "$dir/stage-$k.crt" 2>/dev/null
  openssl verify -CAfile "$dir/ca.crt" "$dir/stage-$k.crt" >/dev/null
done
chmod 644 "$dir/ca.crt" "$dir"/stage-*.crt

echo "make_certs.sh: CA and $stages stage certificates (valid $days days) in $dir"
echo "  every stage:  --tls-ca $dir/ca.crt"
echo "  stage K:      --tls-cert $dir/stage-K.crt --tls-key $dir/stage-K.key"
echo "  keep $dir/ca.key away from the training machines"

#!/bin/sh
# Make a private CA and one certificate per Dask role (scheduler, worker, client), signed by it.
#
#   deploy/tls/make-certs.sh [OUTDIR] [EXTRA_HOSTNAME ...]
#   deploy/tls/make-certs.sh deploy/tls/certs scheduler dask.example.org
#
# Writes OUTDIR/ca.pem (+ ca-key.pem: keep it offline, it signs new certificates) and
# OUTDIR/{scheduler,worker,client}.pem with their keys *-key.pem. Every leaf certificate is valid
# for both ends of a connection (workers also serve their peers) and names localhost, 127.0.0.1
# and the extra hostnames. Validity: $CFACT_TLS_DAYS days (default 365). Keys: RSA 3072 bits, or
# ECDSA P-256 with CFACT_TLS_KEY=ec (smaller and much faster to generate).
set -eu
out=${1:-certs}
[ "$#" -gt 0 ] && shift
days=${CFACT_TLS_DAYS:-365}
case "${CFACT_TLS_KEY:-rsa}" in
    rsa) newkey="-newkey rsa:3072"; usage="digitalSignature,keyEncipherment" ;;
    ec) newkey="-newkey ec -pkeyopt ec_paramgen_curve:P-256"; usage="digitalSignature" ;;
    *) echo "CFACT_TLS_KEY must be rsa or ec, got '$CFACT_TLS_KEY'" >&2; exit 2 ;;
esac
san="DNS:localhost,IP:127.0.0.1"
for h in "$@"; do san="$san,DNS:$h"; done

mkdir -p "$out"
cd "$out"
# shellcheck disable=SC2086  # $newkey is several words on purpose
openssl req -x509 $newkey -nodes -sha256 -days "$days" \
    -keyout ca-key.pem -out ca.pem -subj "/CN=cfact-dask CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for role in scheduler worker client; do
    # shellcheck disable=SC2086
    openssl req $newkey -nodes -sha256 \
        -keyout "$role-key.pem" -out "$role.csr" -subj "/CN=cfact-dask-$role" 2>/dev/null
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,$usage" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectKeyIdentifier=hash" \
        "authorityKeyIdentifier=keyid" \
        "subjectAltName=$san" > "$role.ext"
    openssl x509 -req -sha256 -days "$days" -in "$role.csr" -CA ca.pem -CAkey ca-key.pem \
        -CAcreateserial -extfile "$role.ext" -out "$role.pem" 2>/dev/null
    rm -f "$role.csr" "$role.ext"
done
rm -f ca.srl
chmod 600 ./*-key.pem
chmod 644 ca.pem scheduler.pem worker.pem client.pem
echo "certificates in $(pwd): ca.pem scheduler.pem worker.pem client.pem (+ *-key.pem)"

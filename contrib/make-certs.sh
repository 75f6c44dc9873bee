#!/bin/sh
# Make the TLS files for hostagent with openssl: a CA, a server certificate
# for one host and a client certificate for the engine.
#
# usage: make-certs.sh [-o DIR] [-d DAYS] [-c CLIENT_CN] HOST [IP ...]
#
#   -o DIR        output directory (default ./hostagent-pki)
#   -d DAYS       validity of the certificates made now (default 825)
#   -c CLIENT_CN  subject CN of the client certificate (default
#                 hostagent-engine); list it in server.tls_allowed_subjects
#   HOST          the host's DNS name (subjectAltName DNS:HOST)
#   IP ...        the host's addresses (subjectAltName IP:...)
#
# Creates, keeping whatever already exists so that one CA serves every
# host (run it once per host with the same DIR):
#   DIR/ca.pem DIR/ca.key                     the CA (keep ca.key offline)
#   DIR/server/HOST/{cert,key,ca}.pem         for /etc/pki/hostagent/ on HOST
#   DIR/client/CLIENT_CN/{cert,key,ca}.pem    for the engine (or the CLI)
# Keys are ECDSA P-256, unencrypted, mode 0600.
set -eu

out=./hostagent-pki
days=825
client=hostagent-engine
usage() {
    sed -n '4,12s/^# \{0,1\}//p' "$0" >&2
    exit 2
}
while getopts o:d:c:h opt; do
    case $opt in
    o) out=$OPTARG ;;
    d) days=$OPTARG ;;
    c) client=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
host=$1
shift
case $host in
*/* | "" | .*) echo "make-certs: bad host name '$host'" >&2; exit 2 ;;
esac
case $client in
*/* | "" | .*) echo "make-certs: bad client CN '$client'" >&2; exit 2 ;;
esac

command -v openssl >/dev/null || {
    echo "make-certs: openssl is not installed" >&2
    exit 1
}
umask 077
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$1" 2>/dev/null
}

# sign NAME CN EXTENSIONS OUTDIR: a key, a CSR and a certificate from the CA
sign() {
    mkdir -p "$4"
    newkey "$4/key.pem"
    openssl req -new -key "$4/key.pem" -subj "/CN=$2" -out "$tmp/$1.csr"
    printf '%s\n' "$3" >"$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$out/ca.pem" \
        -CAkey "$out/ca.key" -CAcreateserial -CAserial "$out/ca.srl" \
        -days "$days" -sha256 -extfile "$tmp/$1.ext" \
        -out "$4/cert.pem" 2>/dev/null
    cp "$out/ca.pem" "$4/ca.pem"
    chmod 0600 "$4/key.pem"
    chmod 0644 "$4/cert.pem" "$4/ca.pem"
    echo "make-certs: $4/cert.pem (CN=$2)"
}

if [ ! -f "$out/ca.pem" ]; then
    newkey "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 \
        -subj "/CN=hostagent CA $(hostname -s 2>/dev/null || echo)" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.pem"
    chmod 0644 "$out/ca.pem"
    echo "make-certs: $out/ca.pem (new CA; keep $out/ca.key safe)"
fi

case $host in
*:* | *[!0-9.]*) san="DNS:$host" ;;
*) san="IP:$host" ;; # an IPv4 address given as the host
esac
case $host in *:*) san="IP:$host" ;; esac
for ip in "$@"; do
    san="$san,IP:$ip"
done
common="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer"

if [ ! -f "$out/server/$host/cert.pem" ]; then
    sign server "$host" "$common
extendedKeyUsage=serverAuth
subjectAltName=$san" "$out/server/$host"
fi
if [ ! -f "$out/client/$client/cert.pem" ]; then
    sign client "$client" "$common
extendedKeyUsage=clientAuth" "$out/client/$client"
fi

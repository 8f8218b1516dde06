#!/usr/bin/env bash
# Kamailio's TLS module for tests/interop/test_sip_kamailio.py (federation over TLS):
# Debian ships it apart from the kamailio package. Idempotent: nothing to do when present.
set -euo pipefail
if [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ] || ! command -v kamailio >/dev/null 2>&1; then
    exit 0
fi
echo "setup-sip: installing kamailio-tls-modules"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq kamailio-tls-modules >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq kamailio-tls-modules >/dev/null
}

#!/bin/sh
# balena container start: materialize the keys given as variables, create the device identity on
# first start (its private key never leaves the device), check the device, run the agent.
set -eu
keys=/data/edge-agent/keys
umask 077
mkdir -p "$keys"

if [ -n "${CSU_SEALING_KEY_HEX:-}" ]; then
    printf '%s\n' "$CSU_SEALING_KEY_HEX" > "$keys/csu_x25519.pub"
fi
if [ -n "${CSU_BROKER_CA_PEM:-}" ]; then
    printf '%s\n' "$CSU_BROKER_CA_PEM" > "$keys/broker-ca.crt"
fi
list=""
i=0
for hex in ${CSU_COLLECTOR_KEYS_HEX:-}; do
    printf '%s\n' "$hex" > "$keys/collector-$i.pub"
    list="$list${list:+, }$keys/collector-$i.pub"
    i=$((i + 1))
done
export EDGE_KEYS__COLLECTOR_PUBLIC_KEYS="[$list]"

python -c '
import sys
from pathlib import Path
from edge_agent.formats.keys import generate_device_key, load_ed25519_public, public_key_id
keys = Path(sys.argv[1])
if not (keys / "device_ed25519.pem").exists():
    generate_device_key(keys)
print("device public key id", public_key_id(load_ed25519_public(keys / "device_ed25519.pub")))
' "$keys"

# A config-less start: every setting comes from the EDGE_* variables.
printf '{}\n' > /tmp/site.yaml
edge-agent doctor --config /tmp/site.yaml || true
exec edge-agent run --config /tmp/site.yaml

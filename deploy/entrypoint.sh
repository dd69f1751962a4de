#!/bin/sh
# The container image's entrypoint. The image holds no configuration and so no usable key.
#
# - With arguments, they are the gateway's: compose and the Kubernetes manifests pass
#   `serve --config /etc/gateway/gateway.toml ...` with their mounted configuration.
# - Without, the configuration mounted at $GATEWAY_CONFIG (default /etc/gateway/gateway.toml) is
#   served; with none mounted, the embedded default model is served to one tenant, `demo`,
#   whose key is generated now and printed once (or taken from GATEWAY_DEMO_KEY).
#
# The listen address is $GATEWAY_LISTEN, 0.0.0.0:8080 by default (reachable from outside the
# container). GATEWAY_BIN names the binary (tests run this script outside a container).
set -eu
bin="${GATEWAY_BIN:-gateway}"
if [ "$#" -gt 0 ]; then
    exec "$bin" "$@"
fi
export GATEWAY_LISTEN="${GATEWAY_LISTEN:-0.0.0.0:8080}"
config="${GATEWAY_CONFIG:-/etc/gateway/gateway.toml}"
if [ -f "$config" ]; then
    export GATEWAY_CONFIG="$config"
    exec "$bin" serve
fi
unset GATEWAY_CONFIG
echo "no configuration at $config: serving the default model to the tenant \`demo\` only, with a key printed once below (mount a configuration there for real tenants)" >&2
exec "$bin" serve

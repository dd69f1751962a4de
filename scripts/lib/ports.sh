# Ports and readiness for the side-by-side benchmarks (sourced; nothing else happens on source).
#   free_port          prints a free TCP port on 127.0.0.1
#   wait_ready URL     waits (up to 60 s) until URL answers 2xx; fails naming it otherwise

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # url
    for _ in $(seq 1 600); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "server at $1 did not come up" >&2
    return 1
}

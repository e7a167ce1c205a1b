#!/usr/bin/env bash
# Prints the /etc/hosts lines that let clients on this machine follow the proxies' MOVED
# replies (server_proxyN:600N) to the published ports: sudo sh -c 'examples/mem-broker/hosts.sh >> /etc/hosts'
for n in 1 2 3 4 5 6; do echo "127.0.0.1 server_proxy$n"; done

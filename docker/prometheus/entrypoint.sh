#!/bin/sh
# Prometheus reads a bearer token only from its config or a file, never from the environment:
# the brokers' read token (MOONRAFT_READ_TOKEN, from docker/.env) goes into the file the broker
# scrape job names, readable by nobody else, and Prometheus starts with any extra arguments.
set -eu
umask 077
printf '%s' "${MOONRAFT_READ_TOKEN:?MOONRAFT_READ_TOKEN is not set}" > /run/moonraft/read-token
exec /usr/bin/prometheus --config.file=/etc/moonraft/prometheus.yml --storage.tsdb.path=/prometheus \
    --web.listen-address=0.0.0.0:9090 "$@"

#!/usr/bin/env bash
# Builds the base image `moonraft-base:bookworm` without pulling anything: a minimal Debian
# bookworm root filesystem made by debootstrap from the Debian package mirror (with
# redis-server, redis-tools, curl and jq), imported with `docker import`. Cached: does nothing
# if the image exists (FORCE=1 rebuilds). On a machine with a registry, `FROM debian:bookworm-slim`
# plus `apt-get install redis-server redis-tools curl jq` gives the same base.
set -euo pipefail
IMAGE="${IMAGE:-moonraft-base:bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
if [ -z "${FORCE:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE exists (FORCE=1 to rebuild)"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
}
ROOTFS="$(mktemp -d /var/tmp/moonraft-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=redis-server,redis-tools,curl,jq,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >/dev/null
# What a server image never reads: package caches, documentation, manuals and translations
# (about 50 MB of the 140).
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null
echo "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

# Docker targets. The names of undermoon's walkthrough are kept as aliases.
COMPOSE = docker-compose -p moonraft -f docker/docker-compose.yml
TARGET_DIR ?= /var/tmp/moonraft-target

.PHONY: docker-image docker-up docker-down docker-walkthrough-test docker-build-test-image docker-mem-broker docker-mem-broker-example

# Base image (debootstrap, no registry needed) + the release binary in the moonraft image;
# the Prometheus server's image (Debian's package on the same base).
docker-image:
	./docker/build-base.sh
	docker build -q -t moonraft-prometheus:latest docker/prometheus >/dev/null
	. scripts/env.sh && cargo build --release --bin moonraft
	mkdir -p $(TARGET_DIR)/docker-context
	cp $(TARGET_DIR)/release/moonraft docker/Dockerfile $(TARGET_DIR)/docker-context/
	docker build -q -t moonraft:latest $(TARGET_DIR)/docker-context

# 3 brokers, 2 coordinators, 6 proxies, 12 redis.
docker-up:
	./docker/credentials.sh
	$(COMPOSE) up -d

docker-down:
	$(COMPOSE) down -v

# The walkthrough with checks at every step (builds the images, tears everything down).
docker-walkthrough-test:
	./docker/walkthrough-test.sh

docker-build-test-image: docker-image
docker-mem-broker: docker-up
docker-mem-broker-example: docker-image docker-up

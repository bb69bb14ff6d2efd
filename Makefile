# Shortcuts for the compose deployment (docker-compose.yml). `make help` lists them.

COMPOSE ?= docker compose

.DEFAULT_GOAL := help
.PHONY: help up down test logs check-env

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

check-env:
	@test -f .env || { \
		echo "No .env here: run 'cp .env.example .env' and set POSTGRES_PASSWORD in it." >&2; \
		exit 1; \
	}

up: check-env ## Build the image and start PostgreSQL, Redis, migrations, server and worker
	$(COMPOSE) up -d --build

down: ## Stop and remove the containers (the data volumes are kept)
	$(COMPOSE) down

test: check-env ## Run the test suite in a container against the compose PostgreSQL and Redis
	$(COMPOSE) --profile test build test
	$(COMPOSE) --profile test run --rm test

logs: ## Follow the logs of all services
	$(COMPOSE) logs -f --tail=200

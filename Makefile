# Two commands do all the set-up (README.md):
#   make demo   venv + install + a scaled-down cluster test on this machine, ending in a report
#   make test   venv + install + system packages the tests need + the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup system-deps clean

# setup.py compiles the agent's C closed loop (loadgen/agent/_echoloop.pyx) into the editable install
$(BIN)/.installed: pyproject.toml setup.py loadgen/agent/_echoloop.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[controller,test]'
	touch $@

setup: $(BIN)/.installed

# Debian packages the tests use: Chromium opens the report; iproute2 gives `ss` to the probes; the gateway's
# cluster-mode tests start redis-server, etcd and a Kafka broker (JDK; maven assembles the Kafka archive once);
# the protocol profile tests start Prosody (XMPP) and Mosquitto (MQTT) over WebSocket.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in chromium fonts-dejavu-core iproute2 procps redis-server etcd-server openjdk-17-jre-headless maven prosody mosquitto; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "not root: skipping apt (the browser test needs /usr/bin/chromium)"; fi

demo: setup
	$(BIN)/fab cluster-test

test: setup system-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

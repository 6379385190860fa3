# `make demo` and `make test` do all the set-up they need (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.netspark-ready

.PHONY: setup demo test test-fast test-dataframe test-rxe test-multihost lint bench bench-quick bench-buffers \
	bench-hosts bench-latency clean

$(READY): scripts/setup.sh pyproject.toml setup.py $(wildcard csrc/*) $(shell find jvm -name "*.java")
	VENV=$(VENV) scripts/setup.sh
	touch $@

setup: $(READY)

demo: $(READY)
	$(PY) bench/demo.py

test: $(READY)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not rxe and not multihost and not dataframe"

test-fast: $(READY)
	$(PY) -m pytest -q -m "not rxe and not multihost and not dataframe and not slow"

# DataFrame/SQL exchanges and GraphX through netspark (spark.netspark.jvm=true), flag on vs
# off, and PySpark's own SQL suites with it on.
test-dataframe: $(READY)
	$(PY) -m pytest -q -m dataframe tests/spark

test-rxe: $(READY)
	$(PY) -m pytest -q -m rxe tests/rxe

# A Spark standalone cluster of three network-namespace hosts on a bridge (needs root).
test-multihost: $(READY)
	$(PY) -m pytest -q -m multihost tests/multihost

lint: $(READY)
	$(VENV)/bin/ruff check .

# GroupBy and PageRank against Spark's own shuffle; results and plots in docs/results/.
bench: $(READY)
	$(PY) bench/groupby.py --preset small --rounds 3 --warmup --out docs/results/groupby-small
	$(PY) bench/groupby.py --preset large --rounds 3 \
		--modes spark,netspark-local,netspark-tcp,spark-unixsockets --out docs/results/groupby-large
	$(PY) bench/pagerank.py --scale 17 --edge-factor 8 --partitions 16 --rounds 2 \
		--modes spark,netspark-local,netspark-tcp,netspark-local-delayedack,spark-unixsockets \
		--out docs/results/pagerank

# Small interactive jobs: p50/p99 per job, one host and two namespace hosts (needs root).
bench-latency: $(READY)
	$(PY) bench/latency.py --jobs 15 --rounds 4 --warmup \
		--modes spark,netspark-local,netspark-tcp,netspark-local-delayedack,spark-unixsockets \
		--out docs/results/latency
	$(PY) bench/latency.py --jobs 15 --rounds 4 --warmup \
		--modes spark,netspark-tcp,netspark-local,spark-unixsockets \
		--hosts 2 --link-rate 10gbit --out docs/results/hosts2/latency

bench-quick: $(READY)
	$(PY) bench/groupby.py --preset small --rounds 2 --modes spark,netspark-tcp,netspark-local \
		--out docs/results/quick/groupby
	$(PY) bench/pagerank.py --scale 14 --iterations 3 --partitions 8 --rounds 1 \
		--modes spark,netspark-local --out docs/results/quick/pagerank

# The same across two namespace hosts whose links are limited to 10 Gbit/s (needs root).
bench-hosts: $(READY)
	$(PY) bench/groupby.py --preset small --rounds 3 --warmup --modes spark,netspark-tcp,netspark-local \
		--hosts 2 --link-rate 10gbit --out docs/results/hosts2/groupby-small
	$(PY) bench/pagerank.py --scale 17 --edge-factor 8 --partitions 16 --rounds 2 \
		--modes spark,netspark-tcp,netspark-local --hosts 2 --link-rate 10gbit \
		--out docs/results/hosts2/pagerank

bench-buffers: $(READY)
	$(PY) bench/buffers.py --gib 1 --passes 5 --json docs/results/buffers.json

clean:
	rm -rf $(VENV) build *.egg-info netspark/*.so

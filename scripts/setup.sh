#!/usr/bin/env bash
# Everything netspark needs on a fresh Debian machine: system packages (as root),
# then a virtualenv with netspark built in place. Idempotent; `make` calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# gcc and headers build the native arena; libisal-dev gives it ISA-L's crc32c;
# Java runs Spark; libibverbs-dev builds the RDMA data path (optional: without it
# netspark works over TCP).
DEBS=(gcc libc6-dev make default-jre-headless libisal-dev libibverbs-dev)

missing=()
for deb in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing+=("$deb")
done
# A Java 17+ already on the PATH will do for Spark.
if command -v java >/dev/null && java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then
    missing=("${missing[@]/default-jre-headless}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: these Debian packages are missing: ${missing[*]}" >&2
        echo "setup: run 'sudo apt-get install ${missing[*]}' (or make as root), then retry." >&2
        exit 1
    fi
fi

# javac 17+ builds netspark's JVM shuffle manager. Optional (without it JVM shuffles stay
# Spark's own), so it is installed only as root and at best effort; otherwise the build
# step below says in one line that it is missing.
if ! { command -v javac >/dev/null && javac -version 2>&1 | grep -qE 'javac (1[7-9]|[2-9][0-9])'; } \
        && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian package default-jdk-headless (javac, for the JVM part)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq default-jdk-headless >/dev/null; } ||
        echo "setup: could not install default-jdk-headless; going on without it" >&2
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "setup: netspark needs Python 3.10 or newer ($PYTHON is $("$PYTHON" --version))" >&2
    exit 1
}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[dev,bench]"
"$VENV/bin/python" -c 'import netspark._native'
# The JVM shuffle manager, against this venv's pyspark jars; a no-op when up to date.
# Without a JDK it says so in one line and setup goes on: netspark works without it.
"$VENV/bin/python" -m netspark.jvm.build || true
echo "setup: ready ($("$VENV/bin/python" --version), $(java -version 2>&1 | head -1))"

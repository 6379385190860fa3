"""The one place where `spark.netspark.*` settings are parsed and validated.

Every key, its default and its meaning live in `KEYS`; `conf/spark-defaults.conf.example`
is checked against this table by the tests. A bad value raises `ConfigError` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "spark.netspark."

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A `spark.netspark.*` setting has a value netspark cannot use."""


def parse_size(text: str) -> int:
    """'2m' -> 2097152; plain numbers are bytes (as Spark's byte strings)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 2m, 512k, 1g, 1048576)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_duration(text: str) -> float:
    """'30s' -> 30.0 seconds; plain numbers are seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*", str(text).lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 30s, 5min)")
    return float(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is outside [{low}, {high}]")
        return value

    return parse


def text(value: str) -> str:
    return str(value).strip()


def parse_port_range(text: str) -> tuple[int, int]:
    """'0' -> (0, 0): any free port; '7337' -> (7337, 7337); '7337-7340' -> a range."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not match:
        raise ValueError(f"{text!r} is not a port or a range (examples: 0, 7337, 7337-7400)")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if not 0 <= low <= high <= 65535 or (low == 0 and high):
        raise ValueError(f"{text!r} is not a port range within 1-65535 (or 0: any free port)")
    return low, high


@dataclass(frozen=True)
class Key:
    name: str  # without the prefix
    default: str
    parse: Callable[[str], Any]
    doc: str

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


KEYS: tuple[Key, ...] = (
    Key("enabled", "false", parse_bool,
        "Route every RDD shuffle of this application through netspark."),
    Key("jvm", "true", parse_bool,
        "Also install netspark's JVM shuffle manager for DataFrame/SQL exchanges and GraphX "
        "(its jar on spark.jars, spark.shuffle.manager set): Spark's writers put map outputs "
        "into the executor server's arena and JVM reducers read them in place. false keeps "
        "those shuffles Spark's own. A spark.shuffle.manager of the application's own is kept "
        "(with a warning) unless jvm=true is set explicitly, which refuses it. Needs the jar "
        "built at set-up (python -m netspark.jvm.build); without it: a warning, and only RDD "
        "shuffles go through netspark."),
    Key("transport", "auto", choice("auto", "rdma", "tcp"),
        "auto: RDMA when a device and the peer allow it, else TCP (logged); "
        "rdma: fail loudly without RDMA; tcp: never use RDMA."),
    Key("localShortCircuit", "true", parse_bool,
        "Read extents of a server on the same host in place from its shared arena."),
    Key("buffer.blockSize", "2m", parse_size,
        "Size of one buffer block; a power of two from 64k to 1g (2m = one huge page)."),
    Key("buffer.poolSize", "1g", parse_size,
        "Cap on the arena of one executor; committed outputs spill past it."),
    Key("buffer.initialSize", "64m", parse_size,
        "Arena pre-allocated at start (rounded up to whole slabs)."),
    Key("buffer.slabSize", "32m", parse_size,
        "The arena grows and shrinks by this much (whole blocks)."),
    Key("buffer.idleTimeout", "30s", parse_duration,
        "A slab unused this long is given back to the OS."),
    Key("buffer.hugepages", "auto", choice("auto", "true", "false"),
        "auto: hugetlb pages if free, else transparent huge pages, else 4k pages; "
        "true: fail without hugetlb pages; false: never ask for huge pages."),
    Key("buffer.leaseBatch", "8", bounded_int(1, 1024),
        "Blocks a process leases from the shared arena at once."),
    Key("buffer.acquireTimeout", "60s", parse_duration,
        "How long a writer waits for a free block before PoolExhausted."),
    Key("reducer.maxBytesInFlight", "48m", parse_size,
        "Cap on fetched-but-unread bytes per reduce task."),
    Key("reader.freezeGc", "true", parse_bool,
        "While a reduce task reads a shuffle, leave the records it has read out of Python's "
        "cyclic garbage collections (gc.freeze after each batch once a read has taken "
        "50,000 records, gc.unfreeze when the read ends), so that a task keeping them "
        "(groupByKey, joins) does not have them walked again at every full collection. "
        "Reference counting frees them as usual; only cyclic garbage alive at a freeze "
        "waits for the end of the read. The end of a read unfreezes everything, so an "
        "application that calls gc.freeze in its workers itself should set this false."),
    Key("worker.quickAck", "true", parse_bool,
        "Python workers acknowledge what the executor's JVM sends them at once "
        "(TCP_QUICKACK as each task starts): PySpark's JVM-to-worker socket is TCP without "
        "TCP_NODELAY, so a task's input otherwise waits up to 40 ms for the worker's "
        "delayed acknowledgement, a third of a small task. Linux only; no effect with "
        "spark.python.unix.domain.socket.enabled=true."),
    Key("checksum", "crc32c", choice("crc32c", "none"),
        "Checksum of every extent, verified before any record of it is read."),
    Key("rdma.device", "", text,
        "RDMA device name (for example mlx5_0 or rxe0); empty: the device whose GID table "
        "holds the advertised address, else the first RoCE device."),
    Key("rdma.port", "1", bounded_int(1, 255), "RDMA device port."),
    Key("rdma.gidIndex", "-1", bounded_int(-1, 255),
        "GID index; -1: the RoCE v2 GID of the advertised address, else the first RoCE v2 "
        "IPv4-mapped GID."),
    Key("rdma.naive", "false", parse_bool,
        "Benchmarks only: the 'naive RDMA' baseline, copying every extent through separate "
        "registered bounce buffers on both sides instead of reading arena blocks in place."),
    Key("advertiseAddress", "", text,
        "The address peers on other hosts reach this executor's server at: an IP address, "
        "a host name or an interface name (eth1); empty: the address of Spark's own "
        "executor (its --hostname, else SPARK_LOCAL_IP, else the host name's address "
        "unless loopback, else the local address of the route toward the driver)."),
    Key("bindAddress", "", text,
        "The address the server listens on; empty: the advertised one; 0.0.0.0: all."),
    Key("port", "0", parse_port_range,
        "The server's TCP port: 0 (any free one), a port, or a range (7337-7350) for "
        "firewalled clusters; each executor on a host takes the next free one."),
    Key("network.timeout", "120s", parse_duration,
        "How long a peer may stay silent in the middle of a request."),
    Key("network.connectTimeout", "10s", parse_duration,
        "How long a connection to a peer may take before the attempt counts as failed."),
    Key("network.maxRetries", "3", bounded_int(0, 100),
        "Retries of a fetch after a transient error (connection lost, timeout)."),
    Key("network.retryWait", "500ms", parse_duration,
        "Wait before the first retry; doubled for each further one."),
    Key("spill.dir", "", text,
        "Where committed outputs spill past the pool cap; empty: Spark's local dirs."),
)

_BY_NAME = {key.name: key for key in KEYS}


class NetsparkConf:
    """Validated settings; attribute names are the keys with dots as underscores
    (`conf.buffer_blockSize`)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        for key in KEYS:
            setattr(self, key.attr, values[key.name])

    @classmethod
    def from_spark(cls, settings: Mapping[str, str] | None = None) -> NetsparkConf:
        """Parses `spark.netspark.*` entries of a Spark conf (other keys are ignored)."""
        settings = dict(settings or {})
        unknown = sorted(
            name for name in settings if name.startswith(PREFIX)
            and name[len(PREFIX):] not in _BY_NAME
        )
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]}; known: "
                + ", ".join(PREFIX + key.name for key in KEYS)
            )
        values = {}
        for key in KEYS:
            raw = settings.get(PREFIX + key.name, key.default)
            try:
                values[key.name] = key.parse(raw)
            except ValueError as err:
                raise ConfigError(f"{PREFIX}{key.name}: {err}") from None
        conf = cls(values)
        conf._check_relations()
        return conf

    def _check_relations(self) -> None:
        block = self.buffer_blockSize
        if block & (block - 1) or not (64 << 10) <= block <= (1 << 30):
            raise ConfigError(
                f"{PREFIX}buffer.blockSize: {block} bytes is not a power of two from 64k to 1g"
            )
        slab = self.buffer_slabSize
        if slab < block or slab % block:
            raise ConfigError(
                f"{PREFIX}buffer.slabSize: {slab} bytes is not a whole number of blocks "
                f"({PREFIX}buffer.blockSize={block})"
            )
        if self.buffer_poolSize < slab:
            raise ConfigError(
                f"{PREFIX}buffer.poolSize: {self.buffer_poolSize} bytes is smaller than one "
                f"slab ({PREFIX}buffer.slabSize={slab})"
            )
        if self.buffer_initialSize > self.buffer_poolSize:
            raise ConfigError(
                f"{PREFIX}buffer.initialSize: {self.buffer_initialSize} bytes exceeds "
                f"{PREFIX}buffer.poolSize={self.buffer_poolSize}"
            )
        if self.reducer_maxBytesInFlight < block:
            raise ConfigError(
                f"{PREFIX}reducer.maxBytesInFlight: must hold at least one block ({block} bytes)"
            )

    def with_overrides(self, **overrides: str) -> NetsparkConf:
        """A copy with some keys replaced, given as raw strings (`buffer_poolSize="64m"`)."""
        settings = {PREFIX + key.name: _text_of(getattr(self, key.attr)) for key in KEYS}
        for attr, value in overrides.items():
            settings[PREFIX + attr.replace("_", ".")] = value
        return NetsparkConf.from_spark({k: str(v) for k, v in settings.items()})


def _text_of(value: Any) -> str:
    """A parsed value as text its key's parser reads back."""
    if isinstance(value, tuple):  # a port range
        return "-".join(map(str, value))
    return str(value)


def example_file() -> str:
    """The text of conf/spark-defaults.conf.example, made from KEYS."""
    lines = [
        "# netspark settings for spark-defaults.conf (all optional but `enabled`).",
        "# Generated from netspark/config.py: python -m netspark.config > this file",
        "",
    ]
    for key in KEYS:
        lines.append(f"# {key.doc}")
        lines.append(f"{PREFIX}{key.name:<28} {key.default}".rstrip())
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(example_file(), end="")

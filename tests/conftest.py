import pytest

from netspark.buffer_manager import Arena, BlockPool
from netspark.config import NetsparkConf


def small_conf(**overrides: str) -> NetsparkConf:
    """64 KiB blocks in 256 KiB slabs: small enough to fill and grow in a test."""
    settings = {
        "spark.netspark.buffer.blockSize": "64k",
        "spark.netspark.buffer.slabSize": "256k",
        "spark.netspark.buffer.poolSize": "4m",
        "spark.netspark.buffer.initialSize": "256k",
        "spark.netspark.buffer.acquireTimeout": "2s",
    }
    settings.update({f"spark.netspark.{k}": v for k, v in overrides.items()})
    return NetsparkConf.from_spark(settings)


@pytest.fixture
def arena():
    with Arena.create(small_conf()) as arena:
        yield arena


@pytest.fixture
def pool(arena):
    pool = BlockPool(arena, batch=4, acquire_timeout=2.0)
    yield pool
    pool.close()

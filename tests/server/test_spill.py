import os

import pytest

from netspark.server.worker import read_partition
from netspark.transport.protocol import SPILLED_BLOCK_FLAG
from tests.server.conftest import link_to, request, running_server, write_map


def big_records(map_id: int, count: int = 40) -> list:
    return [(k, (map_id, os.urandom(20_000))) for k in range(count)]  # ~800 KB a map


@pytest.mark.parametrize("short_circuit", ["true", "false"])
def test_outputs_beyond_the_pool_spill_and_read_back_right(tmp_path, short_circuit):
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    settings = {"spill.dir": str(spill_dir), "buffer.acquireTimeout": "20s"}
    written = {}
    with running_server(**settings) as server, link_to(server, **settings) as link:
        for m in range(12):  # ~10 MB through a 4 MB pool
            written[m] = big_records(m)
            write_map(link, 1, m, 1, written[m])
        stats = server.stats()
        assert stats["spilled_outputs"] > 0
        assert stats["spilled_bytes"] > 4 << 20
        assert os.listdir(spill_dir) == []  # unnamed files: nothing to leak
        first = server.advertise(1, 0, [(0, 0)])
        assert all(e.block_id & SPILLED_BLOCK_FLAG for e in first)  # the oldest went first
        with link_to(server, localShortCircuit=short_circuit, **settings) as reader:
            fetcher = reader.fetcher()
            for m in range(12):
                got = list(read_partition(fetcher, [request(server.address, 1, 0, m)]))
                assert got == written[m]
            fetcher.close()
        assert server.unregister(1) >= 0
        assert not server.spiller.files  # unregistering closed (deleted) them


def test_the_spiller_waits_until_the_pool_is_nearly_full(tmp_path):
    with running_server(**{"spill.dir": str(tmp_path)}) as server, link_to(server) as link:
        write_map(link, 1, 0, 1, big_records(0, 10))
        assert server.spiller.spill_some() == 0
        assert server.stats()["spilled_outputs"] == 0

"""How a reduce partition's handles become fetch requests (no Spark needed)."""

from netspark.spark.handles import Handle
from netspark.spark.tasks import FIRST_REQUEST_BYTES, plan_requests
from netspark.transport.fetch import PeerAddress

MIB = 1 << 20
A = PeerAddress("10.0.0.1", 1, "ka", "/a")
B = PeerAddress("10.0.0.2", 2, "kb", "/b")


def handles(server: PeerAddress, sizes: list[int]) -> list[Handle]:
    return [Handle(server, 3, m, 0, 5, size, 1) for m, size in enumerate(sizes)]


def test_requests_start_small_grow_and_take_servers_in_turn():
    by_server = {A: handles(A, [MIB // 2] * 40), B: handles(B, [MIB // 2] * 3)}
    requests = plan_requests(3, 5, by_server, largest=24 * MIB)
    assert [r.peer for r in requests[:4]] == [A, B, A, B]  # in turn while both have some
    sizes_a = [r.size for r in requests if r.peer == A]
    assert sizes_a == [MIB, 4 * MIB, 15 * MIB]  # 1 MiB, then 4x, capped by what is left
    assert sizes_a[0] <= FIRST_REQUEST_BYTES
    assert [r.size for r in requests if r.peer == B] == [MIB, MIB // 2]
    every = [(r.peer, m.map_id) for r in requests for m in r.maps]
    assert sorted(every, key=str) == sorted([(A, m) for m in range(40)]
                                            + [(B, m) for m in range(3)], key=str)
    assert all(r.shuffle == 3 and r.reduce_id == 5 for r in requests)


def test_a_map_output_larger_than_any_request_gets_one_of_its_own():
    requests = plan_requests(3, 5, {A: handles(A, [100 * MIB, 1, 100 * MIB])}, 24 * MIB)
    assert [len(r.maps) for r in requests] == [1, 1, 1]
    assert [r.size for r in requests] == [100 * MIB, 1, 100 * MIB]


def test_requests_never_exceed_the_largest_size_unless_one_map_does():
    requests = plan_requests(3, 5, {A: handles(A, [3 * MIB] * 30)}, largest=8 * MIB)
    assert max(r.size for r in requests) <= 8 * MIB
    assert sum(len(r.maps) for r in requests) == 30

"""What a reduce task fails with when a map output cannot be read (no Spark needed).

With the JVM part on, the message names the map output, in the tag that netspark's JVM
shuffle turns into Spark's fetch failure (jvm/.../PythonHandles.java: `LOST`)."""

import re
from pathlib import Path

from netspark.serde import ChecksumError
from netspark.spark.tasks import MapOutputLost, _raise_read_failure
from netspark.transport.fetch import FetchFailed, FetchRequest, PeerAddress
from netspark.transport.protocol import MapAttempt

A = PeerAddress("10.0.0.1", 1, "ka", "/a")
READING = FetchRequest(A, 3, 5, (MapAttempt(7, 1234), MapAttempt(8, 99)), 10)
JAVA = Path(__file__).parents[2] / "jvm/src/main/java/org/apache/spark/shuffle/netspark"


def failure(err: Exception, spark_reruns: bool) -> BaseException | None:
    try:
        raise err
    except type(err) as raised:
        try:
            _raise_read_failure(None, raised, READING, spark_reruns)  # type: ignore[arg-type]
        except BaseException as replaced:
            assert replaced.__cause__ is raised
            return replaced
    return None


def test_a_checksum_error_names_the_map_output_being_read():
    lost = failure(ChecksumError("crc32c mismatch in extent 1 of 2"), spark_reruns=True)
    assert isinstance(lost, MapOutputLost)
    assert str(lost) == ("crc32c mismatch in extent 1 of 2 "
                         "[netspark lost: shuffle=3 map=7 attempt=1234 partition=5]")


def test_a_failed_fetch_names_its_own_request():
    err = FetchFailed("refused: not committed")
    err.request = FetchRequest(A, 3, 5, (MapAttempt(9, 4),), 10)
    lost = failure(err, spark_reruns=True)
    assert str(lost).endswith("[netspark lost: shuffle=3 map=9 attempt=4 partition=5]")


def test_without_the_jvm_part_errors_stay_as_they_are():
    assert failure(ChecksumError("crc32c mismatch"), spark_reruns=False) is None
    assert failure(FetchFailed("refused"), spark_reruns=False) is None


def test_the_jvm_side_reads_the_tag_as_written():
    source = (JAVA / "PythonHandles.java").read_text()
    [pattern] = re.findall(r'Pattern\.compile\(\s*"(.*?)"\);', source, re.S)
    java_regex = pattern.encode().decode("unicode_escape")
    match = re.search(java_regex, MapOutputLost.tag(READING))
    assert match and match.groups() == ("3", "7", "1234", "5")

"""Soft-RoCE smoke suite, host side.

The `rxe` tests share one VM boot (the `rxe_guest_run` session fixture in
conftest.py) that runs tests/rxe/inside in the guest, and a second boot on a
newer kernel (`rxe_netns_run`) that runs the two-host tests with each host in a
network namespace of its own; they check and report their results. The
unmarked tests check the harness itself on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.rxe import vm

if TYPE_CHECKING:
    from tests.rxe.conftest import GuestRun

# The VM's own limit (NETSPARK_RXE_TIMEOUT) plus room for a first prepare().
_PYTEST_TIMEOUT = float(os.environ.get("NETSPARK_RXE_TIMEOUT", "2400")) + 600

EXPECTED_GUEST_TESTS = (
    "test_device_is_listed",
    "test_port_is_active",
    "test_gid_index_1_is_ipv4_mapped_rocev2",
    "test_pyverbs_rc_rdma_read_1mib",
    "test_ib_read_bw_2mib",
    # the RDMA transport (issue 5)
    "test_connection_set_up",
    "test_control_messages_inline_and_selectively_signaled",
    "test_credits_hold_back_a_flood",
    "test_a_flood_of_control_messages_all_arrive_in_order",
    "test_read_one_extent",
    "test_read_many_extents_spanning_blocks",
    "test_an_invalid_key_or_address_is_a_remote_access_error[rkey]",
    "test_an_invalid_key_or_address_is_a_remote_access_error[addr]",
    "test_a_peer_killed_mid_read",
    "test_naive_mode_copies_through_bounce_buffers",
    "test_a_shuffle_between_two_servers_over_rdma",
    "test_auto_uses_tcp_with_a_peer_without_rdma",
    "test_a_pyverbs_client_reads_what_a_netspark_server_advertised",
    "test_the_device_going_away_falls_back_to_tcp",
    "test_pyspark_group_by_key_reads_over_rdma",
)

# Run in the second boot, each host a network namespace (tests/rxe/inside/hosts.py).
EXPECTED_NETNS_TESTS = (
    "test_a_fetch_between_two_devices_uses_each_sides_own_device_and_gid[A-serves-B]",
    "test_a_fetch_between_two_devices_uses_each_sides_own_device_and_gid[B-serves-A]",
    "test_a_reader_forced_onto_the_other_hosts_device_says_so",
    "test_a_gid_that_is_not_the_advertised_address_never_gives_wrong_data[reader]",
    "test_a_gid_that_is_not_the_advertised_address_never_gives_wrong_data[server]",
)

rxe = pytest.mark.rxe


def _console_tail(output: str, n: int = 80) -> str:
    return "\n".join(output.splitlines()[-n:])


def _assert_exited_zero(run: GuestRun) -> None:
    assert run.returncode == 0, (
        f"inner pytest exited {run.returncode}; VM console:\n" + _console_tail(run.output)
    )


def _assert_every_test_passed(run: GuestRun, expected: tuple[str, ...]) -> None:
    """A run of skips would hide a broken bring-up: every inner test must pass."""
    ran = {name.rsplit("::", 1)[-1] for name in run.outcomes}
    assert set(expected) <= ran, f"missing inner tests: {set(expected) - ran}"
    not_passed = {name: outcome for name, outcome in run.outcomes.items() if outcome != "passed"}
    assert not not_passed, f"inner tests not passed: {not_passed}"


@rxe
@pytest.mark.timeout(_PYTEST_TIMEOUT)
def test_guest_suite_passes(rxe_guest_run) -> None:
    _assert_exited_zero(rxe_guest_run)


@rxe
@pytest.mark.timeout(_PYTEST_TIMEOUT)
def test_guest_ran_every_test(rxe_guest_run) -> None:
    _assert_every_test_passed(rxe_guest_run, EXPECTED_GUEST_TESTS)


@rxe
@pytest.mark.timeout(_PYTEST_TIMEOUT)
def test_two_hosts_in_network_namespaces_pass(rxe_netns_run) -> None:
    """The RDMA tests between two hosts, each in a namespace of its own, on a kernel
    whose rxe carries traffic between namespaces."""
    assert int(rxe_netns_run.kernel.split(".")[0]) >= 7, rxe_netns_run.kernel
    _assert_exited_zero(rxe_netns_run)
    _assert_every_test_passed(rxe_netns_run, EXPECTED_NETNS_TESTS)


@rxe
@pytest.mark.timeout(_PYTEST_TIMEOUT)
def test_ib_read_bw_reference_recorded(rxe_guest_run) -> None:
    gbps = rxe_guest_run.metrics.get("ib_read_bw_2MiB_Gbps")
    assert gbps is not None and gbps > 0, f"no ib_read_bw figure: {rxe_guest_run.metrics}"
    print(f"ib_read_bw 2 MiB in the VM: {gbps:.3f} Gb/s")


# --- the harness on the host (no VM) ------------------------------------------

_ECHO = (
    "import json, os, sys;"
    " json.dump({'argv': sys.argv[2:], 'env': dict(os.environ)}, open(sys.argv[1], 'w'))"
)


def test_run_script_passes_argv_and_env_verbatim(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    argv = [
        sys.executable,
        "-c",
        _ECHO,
        str(out),
        "a b",
        "$HOME",
        "'q'",
        '"dq"',
        "`id`",
        "",
        "*",
        "x\ny",
    ]
    env = {"HOME": "/tmp", "PATH": vm.DEFAULT_PATH, "ODD": "x y $z 'q' \"dq\"\n2", "EMPTY": ""}
    script = tmp_path / "run.sh"
    script.write_text(vm.run_script(argv, workdir=str(tmp_path), env=env, rundir=str(tmp_path)))
    subprocess.run(["/bin/sh", str(script)], check=True, cwd="/", capture_output=True)
    assert (tmp_path / "started").exists()
    assert (tmp_path / "rc").read_text().strip() == "0"
    seen = json.loads(out.read_text())
    assert seen["argv"] == argv[4:]
    extra = set(seen["env"]) - set(env)
    assert {k: seen["env"][k] for k in env} == env
    assert extra <= {"LC_CTYPE"}, f"the command saw variables it was not given: {extra}"


def test_run_script_records_failures(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text(
        vm.run_script(
            ["sh", "-c", "exit 7"], workdir="/", env={"PATH": vm.DEFAULT_PATH}, rundir=str(tmp_path)
        )
    )
    subprocess.run(["/bin/sh", str(script)], check=True, capture_output=True)
    assert (tmp_path / "rc").read_text().strip() == "7"
    missing = tmp_path / "no-such-dir"
    script.write_text(vm.run_script(["true"], workdir=str(missing), env={}, rundir=str(tmp_path)))
    subprocess.run(["/bin/sh", str(script)], check=True, capture_output=True)
    assert (tmp_path / "rc").read_text().strip() == "126"


def test_cpio_writer_layout() -> None:
    from tests.rxe.image import CpioWriter

    writer = CpioWriter()
    writer.add_dir("bin")
    writer.add_file("init", b"#!/bin/sh\n", 0o755)
    data = writer.finish()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"init\0" in data and b"TRAILER!!!\0" in data

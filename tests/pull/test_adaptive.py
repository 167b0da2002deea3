"""The pull engine chooses how many connections and ranges to open from the throughput it observes."""
from __future__ import annotations

import re

from conftest import assert_pulled, content
from hub_imitation import Faults
from ovms.pull.transfer import ConnectionControl

MIB = 1 << 20


def drive(control: ConnectionControl, rate_of, seconds: float = 5.0, step: float = 0.01) -> list[int]:
    """Feed the control a transfer whose total rate is ``rate_of(count)``, every slot busy; the counts it chose."""
    now, received, counts = 0.0, 0.0, []
    while now < seconds:
        received += rate_of(control.limit) * step
        control.observe(now, int(received), control.limit)
        if not counts or counts[-1] != control.limit:
            counts.append(control.limit)
        now += step
    return counts


def test_grows_while_each_connection_is_capped():
    # A CDN edge capping each connection at 25 MiB/s: the total grows with the count, up to the bound.
    assert drive(ConnectionControl(4, 32), lambda n: 25 * MIB * n) == [4, 8, 16, 32]


def test_stops_where_the_total_stops_growing():
    # The link gives 200 MiB/s whatever the count: 8 -> 16 shows no gain, and it goes back to 8 (each connection
    # costs a block of memory and the server's work).
    control = ConnectionControl(8, 64)
    assert drive(control, lambda n: 200 * MIB) == [8, 16, 8]
    assert control.settled
    # 10% more is not enough either: back to 16 after trying 32.
    assert drive(ConnectionControl(8, 64), lambda n: {8: 200, 16: 300}.get(n, 330) * MIB) == [8, 16, 32, 16]


def test_goes_back_when_more_connections_are_slower():
    control = ConnectionControl(8, 64)
    assert drive(control, lambda n: 400 * MIB if n <= 8 else 250 * MIB) == [8, 16, 8]


def test_ignores_windows_without_every_slot_busy():
    control = ConnectionControl(4, 32)
    for i in range(200):  # 2 s with 3 of 4 slots busy: no measurement, no change
        control.observe(i * 0.01, i * MIB, 3)
    assert control.limit == 4 and control.rate == 0


def test_bound_below_the_start():
    control = ConnectionControl(8, 3)
    assert control.limit == 3 and control.settled


REPO = "OpenVINO/split-ov"


def test_ranges_follow_the_rate_per_connection(hub, pull, big_files):
    # One 24 MiB file, each response capped at 3 MB/s, one connection at first: the engine adds connections, and
    # the new file's ranges are cut in file order into stripes (min(4 MiB, OVMS_PULL_SEGMENT_BYTES)) as connections
    # take them, so all of them work to the end. (A resumed file's are cut to about one second of one
    # connection's rate instead.)
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.bin": big_files["kill24m.bin"],
             "openvino_model.xml": content("sx", 5_000)}
    hub.add_repo(REPO, files)
    hub.set_faults(REPO, "openvino_model.bin", Faults(throttle_bps=3_000_000, times=10**6))
    run = pull(REPO, "--task", "text_generation", "--log_level", "DEBUG", OVMS_PULL_SEGMENT_BYTES=str(2 * MIB),
               OVMS_PULL_INITIAL_CONNECTIONS="1", OVMS_PULL_CONNECTIONS="4")
    assert run.code == 0, run.output
    assert "trying 2" in run.output, run.output
    assert re.search(r"openvino_model\.bin: stripe at [0-9]+ of 2\.0 MiB", run.output), run.output
    assert_pulled(pull.models / REPO, files)
    cdn = [r for r in hub.requests if r["origin"] == "cdn" and r["sent"]]
    assert len(cdn) > 4, cdn  # more ranges than the 4 planned up front
    # Only ranges not yet requested are cut: not one byte comes twice.
    assert sum(r["sent"] for r in cdn) == 24 * MIB, cdn
    assert not list((pull.models / REPO).glob("*.lfs_part*"))

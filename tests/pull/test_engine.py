"""SharedEngine: pulls on several threads share one multi handle and one bound on the transfers in flight; free
slots go round-robin (every pull is under way at once); a pull that fails or is stopped ends alone."""
from __future__ import annotations

import concurrent.futures
import hashlib

import pytest

from hub_imitation import Faults, HubImitation
from ovms.pull.engine import SharedEngine
from ovms.pull.errors import InterruptedPull, PullError, VerificationError
from ovms.pull.paths import ModelPaths
from ovms.pull.pull import pull_repository
from ovms.pull.settings import PullSettings


def blob(seed: str, size: int) -> bytes:
    return (hashlib.sha256(seed.encode()).digest() * (size // 32 + 1))[:size]


@pytest.fixture
def hub():
    h = HubImitation().start()
    yield h
    h.stop()


def settings(hub: HubImitation) -> PullSettings:
    return PullSettings(endpoint=hub.hub_url, resume_attempts=1, resume_interval=0.05, segment_bytes=1 << 20,
                        connections=8, initial_connections=8, sync=False)


def overlap(records: list[dict]) -> int:
    """The most requests that were being answered at once."""
    edges = sorted([(r["started"], 1) for r in records] + [(r["ended"], -1) for r in records])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_pulls_share_the_bound_and_take_turns(hub, tmp_path):
    names = [f"org/m{i}" for i in range(3)]
    for name in names:
        hub.add_repo(name, {"config.json": b"{}", "model.bin": blob(name, 6 << 20)})  # six 1 MiB ranges each
        hub.set_faults(name, "model.bin", Faults(throttle_bps=2 << 20, times=1 << 30))
    engine = SharedEngine(3, 3)
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda n: pull_repository(ModelPaths(tmp_path, n), settings(hub), engine=engine),
                                    names))
    finally:
        engine.close()
    assert [len(r.files) for r in results] == [2, 2, 2]
    for name in names:
        assert (tmp_path / name / "model.bin").read_bytes() == blob(name, 6 << 20)
    cdn = [r for r in hub.requests if r["origin"] == "cdn"]
    assert engine.peak_in_flight == 3 and overlap(cdn) <= 3, (engine.peak_in_flight, overlap(cdn))
    # Turns: the pull that came first (and took every slot) did not keep the slots that freed up until its own
    # ranges ran out; each other pull started before the first one's last range did.
    starts = {n: sorted(r["started"] for r in cdn if r["path"] == f"/cdn/{hub.repos[n].files['model.bin'].sha256}")
              for n in names}
    first = min(names, key=lambda n: starts[n][0])
    for name in names:
        assert len(starts[name]) >= 6, (name, starts[name])
        if name != first:
            assert starts[name][0] < starts[first][-1], (name, first, starts)


def test_a_failing_or_stopped_pull_ends_alone(hub, tmp_path):
    hub.add_repo("org/good", {"model.bin": blob("good", 4 << 20)})
    hub.set_faults("org/good", "model.bin", Faults(throttle_bps=4 << 20, times=1 << 30))
    hub.add_repo("org/bad", {"model.bin": blob("bad", 2 << 20)})
    hub.set_faults("org/bad", "model.bin", Faults(flip_at=5, times=1 << 30))  # corrupt every time
    hub.add_repo("org/stopped", {"model.bin": blob("stopped", 4 << 20)})
    hub.set_faults("org/stopped", "model.bin", Faults(throttle_bps=1 << 20, times=1 << 30))
    engine = SharedEngine(4, 4)
    stop = {"now": None}
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            good = pool.submit(pull_repository, ModelPaths(tmp_path, "org/good"), settings(hub), engine=engine)
            bad = pool.submit(pull_repository, ModelPaths(tmp_path, "org/bad"), settings(hub), engine=engine)
            stopped = pool.submit(pull_repository, ModelPaths(tmp_path, "org/stopped"), settings(hub),
                                  engine=engine, stop_requested=lambda: stop["now"])
            with pytest.raises(VerificationError, match="model.bin failed verification"):
                bad.result(60)
            stop["now"] = "canceled"
            with pytest.raises(InterruptedPull, match="stopped by canceled"):
                stopped.result(60)
            assert len(good.result(60).files) == 1
    finally:
        engine.close()
    assert (tmp_path / "org" / "good" / "model.bin").read_bytes() == blob("good", 4 << 20)
    assert not (tmp_path / "org" / "bad" / "model.bin").exists()
    assert engine.in_flight() == 0


def test_a_failure_of_the_engine_itself_ends_its_pulls_with_the_reason_and_it_goes_on(hub, tmp_path):
    """Never a silent hang: a bug in a turn (here the control's measurement raising) fails the pulls in flight
    with a message, and the next pull is served."""
    hub.add_repo("org/a", {"model.bin": blob("a", 2 << 20)})
    engine = SharedEngine(2, 2)
    real_observe = engine.control.observe
    calls = {"n": 0}

    def observe_once_broken(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_observe(*args)

    engine.control.observe = observe_once_broken
    try:
        with pytest.raises(PullError, match=r"The download engine failed \(RuntimeError: boom\)"):
            pull_repository(ModelPaths(tmp_path, "org/a"), settings(hub), engine=engine)
        assert len(pull_repository(ModelPaths(tmp_path, "org/a"), settings(hub), engine=engine).files) == 1
    finally:
        engine.close()
    assert (tmp_path / "org" / "a" / "model.bin").read_bytes() == blob("a", 2 << 20)

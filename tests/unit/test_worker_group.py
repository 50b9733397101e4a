"""Workers in one consumer group share the frames topic, including one that joins a running group."""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from pipeline.settings import KafkaSettings, Settings
from streams.app import create_app

FRAMES = {"linesight.frames"}


def _assign(replicas: int, current: dict[str, set[int]], partitions: int) -> dict[str, set[int]]:
    """Faust's assignment of `partitions` among the members, each holding `current` before."""
    members = {m: CopartitionedAssignment(actives=set(p), topics=set(FRAMES)) for m, p in current.items()}
    out = CopartitionedAssignor(topics=FRAMES, cluster_asgn=members, num_partitions=partitions,
                                replicas=replicas).get_assignment()
    return {m: set(a.actives) for m, a in out.items()}


@pytest.mark.parametrize(("partitions", "before"), [
    (4, {"a": {0, 2}, "b": {1, 3}, "c": set()}),  # 2 workers on 4 partitions, a third joins
    (3, {"a": {0, 2}, "b": {1}, "c": set()}),
    (6, {"a": {0, 1, 2}, "b": {3, 4, 5}, "c": set(), "d": set()}),
])
def test_a_worker_joining_a_running_group_gets_partitions(tmp_path: Path, partitions: int,
                                                          before: dict[str, set[int]]) -> None:
    """The worker's app gives its assignor no standby replicas (it keeps no tables): with Faust's
    default of one, the assignor kept every member at ceil(partitions / members) and a worker
    joining 2 workers on 4 partitions got none (measured on the embedded broker, docs/benchmarks.md)."""
    app = create_app(Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:19092"), state_dir=tmp_path / "state"))
    assert app.assignor.replicas == 0
    after = _assign(app.assignor.replicas, before, partitions)
    assert all(after[m] for m in before), after
    assert sorted(p for ps in after.values() for p in ps) == list(range(partitions))  # each exactly once
    assert max(map(len, after.values())) - min(map(len, after.values())) <= 1
    # What the default did: the newcomer got nothing.
    assert not _assign(1, {"a": {0, 2}, "b": {1, 3}, "c": set()}, 4)["c"]

"""RayRunner on a real local Ray cluster: a head node and a second node joined to it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

import poptune as pt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head` plus a second node `ray start --address`; stopped afterwards."""
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not installed (pip install 'poptune[ray]')")
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    try:
        subprocess.run(
            [ray_cli, "start", f"--address={address}", *common],
            check=True,
            capture_output=True,
            env=env,
            timeout=180,
        )
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=180)


def test_ray_runner_trains_the_population_on_two_nodes(ray_cluster: str, quick_run):
    import ray

    runner = pt.RayRunner(address=ray_cluster, workers=2, num_cpus=1)
    result = quick_run(name="ray", population=4, intervals=5, runner=runner)
    assert result.status == "finished"
    assert [m.step for m in result.members] == [5] * 4
    assert len(result.intervals()) == 20
    assert not ray.is_initialized()  # the runner disconnected its driver


def test_ray_actors_train_blocks_of_members(ray_cluster: str, quick_run):
    """block=N on Ray: each actor claims blocks and one call of the function trains them."""
    from poptune.testing import quadratic_block_loop

    runner = pt.RayRunner(address=ray_cluster, workers=2, num_cpus=1)
    result = quick_run(
        quadratic_block_loop, name="ray-blocks", population=4, intervals=4, block=2, runner=runner
    )
    assert result.status == "finished"
    assert [m.step for m in result.members] == [4] * 4
    intervals = result.intervals()
    assert len(intervals) == 16
    assert {i.metrics["members"] for i in intervals} == {2.0}  # every call trained a block of 2
    assert len(result.exploits()) > 0


def test_an_address_where_no_cluster_answers_is_refused_at_once(quick_run):
    """ray.init would retry it for minutes; the runner says what is wrong before calling it."""
    pytest.importorskip("ray")
    import ray

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError, match=re.escape(f"no Ray cluster answers at {address} (")):
        quick_run(name="nowhere", population=2, intervals=2, runner=pt.RayRunner(address))
    assert not ray.is_initialized()
    unknown = "no-such-host.invalid:1"
    with pytest.raises(ConnectionError, match=re.escape(f"no Ray cluster answers at {unknown} (")):
        quick_run(name="nowhere", population=2, intervals=2, runner=pt.RayRunner(unknown))


def test_ray_runner_validates_its_parameters():
    with pytest.raises(ValueError, match="'workers'"):
        pt.RayRunner(workers=0)
    with pytest.raises(ValueError, match="'max_restarts' parameter of RayRunner"):
        pt.RayRunner(max_restarts=-1)
    with pytest.raises(ValueError, match="'num_gpus'"):
        pt.RayRunner(num_gpus=-1)


def test_a_killed_actor_is_replaced_and_the_run_finishes(ray_cluster: str, quick_run):
    import signal
    import threading
    import time

    from poptune.storage import SQLStorage
    from poptune.testing import SlowQuadratic, check_steps

    url = quick_run.storage
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            time.sleep(0.2)
            try:
                storage = SQLStorage(url)
                record = storage.population("killed")
                owners = list(storage.claims(record.id).values())
                storage.close()
            except Exception:
                continue
            if owners and len(pt.load(url, "killed").intervals()) >= 4:
                pid = int(owners[0].split(":")[1])  # owner = host:pid:id
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    runner = pt.RayRunner(address=ray_cluster, workers=2, num_cpus=1, max_restarts=2)
    result = quick_run(
        SlowQuadratic, name="killed", population=4, intervals=8, lease_seconds=2.0, runner=runner
    )
    killer.join()
    assert killed, "no worker was killed"
    assert result.status == "finished"
    assert [m.step for m in result.members] == [8] * 4
    check_steps(result)

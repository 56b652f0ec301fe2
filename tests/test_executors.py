"""geowall.executors without Ray: selection through the environment, the local executor, resources."""

from __future__ import annotations

import pytest

from geowall import executors


def test_environment_selects_the_executor_for_notebook_kernels(monkeypatch):
    env = executors.environment("local", None)
    assert env == {executors.ENV_EXECUTOR: "local", executors.ENV_ADDRESS: ""}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert isinstance(executors.current(), executors.LocalExecutor)
    monkeypatch.delenv(executors.ENV_EXECUTOR)
    assert executors.current().name == "local"  # the default
    with pytest.raises(ValueError, match="--executor 'dask'"):
        executors.environment("dask", None)
    with pytest.raises(ValueError, match="--address only applies to --executor ray"):
        executors.environment("local", "10.0.0.1:6379")


def test_local_executor_runs_in_order_in_process():
    seen = []
    out = list(executors.LocalExecutor().map(lambda a, b: seen.append(a) or a * b, [(1, 2), (3, 4), (5, 6)]))
    assert out == [((1, 2), 2), ((3, 4), 12), ((5, 6), 30)] and seen == [1, 3, 5]


def test_resources_ask_for_gpus_only_for_gpu_work_on_cuda():
    assert executors.resources_for("cuda", "sae").ray_options() == {"num_cpus": 1, "num_gpus": 1}
    assert executors.resources_for("cuda:1", "harvest").num_gpus == 1
    assert executors.resources_for("cuda", "geometry").num_gpus == 0
    assert executors.resources_for("cpu", "sae").num_gpus == 0


def test_run_rejects_an_unknown_executor_before_any_work(tmp_path):
    from geowall import pipeline

    with pytest.raises(ValueError, match="expected one of"):
        pipeline.run("smoke", executor="spark", runs_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())

"""Where the per-model and per-(model, layer) work runs: in this process, or on a Ray cluster.

The pipeline's fan-out points (the harvest of each model in step 00, the SAEs of each
(model, layer) in step 01, the geometry of each (model, layer) in step 02) hand their
units of work to an executor:

- :class:`LocalExecutor` (the default) runs them one after another in this process.
- :class:`RayExecutor` submits each as a Ray task with a resource request (GPUs for
  harvest and SAE work when the profile's device is CUDA, CPUs otherwise and for
  geometry) and yields results as tasks finish. A task whose worker dies is retried
  (``max_retries``). Tasks return rows; the driver (the notebook's process) is the only
  writer of the step's tables and writes them atomically, skipping keys already there,
  so every row lands exactly once, and a run can be resumed with either executor.
  Activations are the exception: a harvest task writes its layers' arrays straight into
  the run folder (each layer renamed into place when complete), so the run folder must
  be a path every node mounts (e.g. NFS) at the same place.

``geowall run --executor ray [--address ADDR]`` selects Ray for a run: the runner
exports ``GEOWALL_EXECUTOR`` / ``GEOWALL_RAY_ADDRESS`` to the notebook kernels, and
:func:`current` reads them. The executor never enters a step's fingerprint: results do
not depend on where they were computed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

ENV_EXECUTOR = "GEOWALL_EXECUTOR"
ENV_ADDRESS = "GEOWALL_RAY_ADDRESS"
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Resources:
    """What one task asks of a Ray node (ignored by the local executor)."""

    num_cpus: float = 1
    num_gpus: float = 0
    memory_bytes: int | None = None

    def ray_options(self) -> dict:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            opts["memory"] = int(self.memory_bytes)
        return opts


def resources_for(device: str, kind: str) -> Resources:
    """One GPU for harvest and SAE tasks on a CUDA profile, else one CPU; geometry on CPUs."""
    gpu = str(device).startswith("cuda") and kind in ("harvest", "sae")
    return Resources(num_cpus=1, num_gpus=1 if gpu else 0)


class LocalExecutor:
    name = "local"

    def map(
        self, fn: Callable, items: Iterable[tuple], *, resources: Resources | None = None, desc: str = ""
    ) -> Iterator[tuple[tuple, Any]]:
        """``(args, fn(*args))`` for each args tuple, in order, in this process."""
        for args in items:
            yield args, fn(*args)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = 3, init_kwargs: dict | None = None):
        try:
            import ray
        except ModuleNotFoundError:
            raise ModuleNotFoundError("executor 'ray' needs Ray: pip install 'geowall[ray]'") from None
        self.ray = ray
        self.max_retries = max_retries
        for attempt in range(3):  # Ray gives a starting raylet a fixed 30 s: a busy machine can miss it
            if ray.is_initialized():
                break
            try:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **(init_kwargs or {}))
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise

    def map(
        self, fn: Callable, items: Iterable[tuple], *, resources: Resources | None = None, desc: str = ""
    ) -> Iterator[tuple[tuple, Any]]:
        """Submit ``fn(*args)`` for every args tuple as a Ray task; yield ``(args, result)`` as
        each finishes. A task whose worker process dies is retried up to ``max_retries``
        times; an exception raised by ``fn`` is not retried and propagates here."""
        ray = self.ray
        opts = (resources or Resources()).ray_options()
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False, **opts)(fn)
        pending = {}
        for args in items:
            pending[remote.remote(*args)] = args
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            args = pending.pop(ref)
            yield args, ray.get(ref)


def make(name: str = "local", address: str | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ValueError(f"executor {name!r}: expected one of {EXECUTORS}")


def current():
    """The executor a notebook kernel was asked to use (``GEOWALL_EXECUTOR``; default local)."""
    return make(os.environ.get(ENV_EXECUTOR, "local") or "local", os.environ.get(ENV_ADDRESS) or None)


def environment(name: str, address: str | None) -> dict[str, str]:
    """The variables that make :func:`current` in a notebook kernel return this executor."""
    if name not in EXECUTORS:
        raise ValueError(f"--executor {name!r}: expected one of {EXECUTORS}")
    if address and name != "ray":
        raise ValueError("--address only applies to --executor ray")
    return {ENV_EXECUTOR: name, ENV_ADDRESS: address or ""}

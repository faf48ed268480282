"""Run the real vLLM on token prompts in a fresh process and read back what it measured.

:func:`run_vllm` writes a request (JSON) and runs ``python -m serving.vllm_plugin.harness.child
REQUEST.json RESULT.json`` (a fresh process, since vLLM spawns workers). The request's keys, the
child's modes (one generate, a sweep, a lockstep sweep) and the result's layout are described in
:mod:`serving.vllm_plugin.harness.child`. This module does not import vllm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.vllm_plugin.harness.request import VllmRequest, parse_request


def device_env(rank: int, replicas: int, ranks_per_replica: int) -> dict[str, str]:
    """The environment that gives engine replica ``rank`` of ``replicas`` its own devices: its
    ``ranks_per_replica`` GPUs (TP x PP), or on a machine without one its share of the CPU cores,
    one core list per rank as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` takes them (vLLM's automatic
    binding refuses several ranks on one NUMA node). Empty where vLLM's defaults do: one replica of
    one rank, or a binding the caller set."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus:
        if replicas == 1:
            return {}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        mine = visible[rank * ranks_per_replica : (rank + 1) * ranks_per_replica]
        return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}
    if replicas * ranks_per_replica == 1 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return {}
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // replicas
    mine = cores[rank * share : (rank + 1) * share]
    per_rank = max(1, len(mine) // ranks_per_replica)
    lists = [mine[i * per_rank : (i + 1) * per_rank] for i in range(ranks_per_replica)]
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, c)) for c in lists)}


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)


_LIVE: set[int] = set()  # process groups of the runs in flight (their children's pids)


def _kill_group(pid: int) -> None:
    """Kill the child ``pid`` and every process it started (vLLM's EngineCore and workers outlive a
    killed parent otherwise, holding memory and cores)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_all_runs() -> None:
    """Kill every run in flight (from any thread): for a caller interrupted while runs go on in
    other threads."""
    for pid in list(_LIVE):
        _kill_group(pid)


def run_vllm(
    request: dict | VllmRequest,
    workdir: Path,
    timeout: float = 900,
    env: dict[str, str] | None = None,
    poll: Callable[[], None] | None = None,
) -> dict:
    """Run one request (:class:`~.request.VllmRequest`, checked here first: ``ValueError`` naming every
    bad key) in a subprocess; raise RuntimeError with vLLM's last output on failure (or when it runs
    past ``timeout`` seconds).
    ``env`` adds environment variables (e.g. SPECFORGE_ADAPTIVE_SPEC for the adaptive plugin);
    ``poll`` is called about once a second while the child runs (e.g. to advance a progress bar on a
    streamed generate). The result carries ``"log"``: the last 20,000 characters vLLM printed."""
    workdir.mkdir(parents=True, exist_ok=True)
    req, res = workdir / "vllm_request.json", workdir / "vllm_result.json"
    checked = request if isinstance(request, VllmRequest) else parse_request(request)
    req.write_text(checked.model_dump_json(exclude_unset=True))
    res.unlink(missing_ok=True)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.vllm_plugin.harness.child", str(req), str(res)],
            env={**vllm_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: vLLM's engine processes go with it
        )
        _LIVE.add(proc.pid)
        deadline = time.monotonic() + timeout
        on_term = None
        if threading.current_thread() is threading.main_thread():  # a terminated caller takes vLLM along
            on_term = signal.signal(signal.SIGTERM, _exit_on_term)
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM run did not finish within {timeout:.0f} s (request: {req})")
                if poll is not None:
                    poll()
                time.sleep(1.0)
        finally:
            _kill_group(proc.pid)
            proc.wait()
            _LIVE.discard(proc.pid)
            if on_term is not None:
                signal.signal(signal.SIGTERM, on_term)
        if poll is not None:
            poll()
        log.seek(0)
        output = log.read()
    if proc.returncode != 0 or not res.is_file():
        raise RuntimeError(f"vLLM run failed (exit {proc.returncode}):\n{output[-4000:]}")
    return {**json.loads(res.read_text()), "log": output[-20000:]}

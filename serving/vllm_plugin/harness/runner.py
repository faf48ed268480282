"""Run the real vLLM on token prompts in a fresh process and read back what it measured.

:func:`run_vllm` writes a request (JSON) and runs ``python -m serving.vllm_plugin.harness.child
REQUEST.json RESULT.json`` (a fresh process, since vLLM spawns workers). The request's keys, the
child's modes (one generate, a sweep, a lockstep sweep) and the result's layout are described in
:mod:`serving.vllm_plugin.harness.child`. This module does not import vllm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from serving.vllm_plugin.harness.request import VllmRequest, parse_request


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


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
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM run did not finish within {timeout:.0f} s (request: {req})")
                if poll is not None:
                    poll()
                time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if poll is not None:
            poll()
        log.seek(0)
        output = log.read()
    if proc.returncode != 0 or not res.is_file():
        raise RuntimeError(f"vLLM run failed (exit {proc.returncode}):\n{output[-4000:]}")
    return {**json.loads(res.read_text()), "log": output[-20000:]}

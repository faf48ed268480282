"""The real OpenAI-compatible vLLM server, started as users start it, for tests and benchmarks.

:class:`OpenAIServer` runs ``python -m vllm.entrypoints.openai.api_server`` in a subprocess (with
the plugin switched on through the environment when asked), waits until ``/health`` answers, and
stops it on exit (SIGTERM, then SIGKILL). Its log goes to a file; a server that dies or never
answers raises :class:`ServerError` with the log's tail. :func:`spec_counters` reads vLLM's
speculative-decoding counters from ``/metrics``. No vllm import here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.vllm_plugin.harness.runner import vllm_env

START_TIMEOUT_S = 300


class ServerError(RuntimeError):
    """The server did not start, or died; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenAIServer:
    """``with OpenAIServer(target, log) as server: httpx.get(server.url + "/v1/models")``.

    ``speculative_config``: vLLM's ``--speculative-config`` (None: no speculation); ``env``: extra
    environment (``SPECFORGE_ADAPTIVE_SPEC`` switches the plugin on). The served model's name is
    ``model_name``."""

    def __init__(
        self,
        target: Path,
        log: Path,
        speculative_config: dict | None = None,
        env: dict[str, str] | None = None,
        max_num_seqs: int = 64,
        max_model_len: int = 1024,
        dtype: str = "float32",
        model_name: str = "target",
        port: int | None = None,
    ):
        self.target, self.log = Path(target), Path(log)
        self.speculative_config, self.env = speculative_config, dict(env or {})
        self.max_num_seqs, self.max_model_len, self.dtype = max_num_seqs, max_model_len, dtype
        self.model_name = model_name
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.target),
            "--served-model-name",
            self.model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enforce-eager",
            "--dtype",
            self.dtype,
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-model-len",
            str(self.max_model_len),
            "--seed",
            "0",
        ]
        if self.speculative_config is not None:
            cmd += ["--speculative-config", json.dumps(self.speculative_config)]
        return cmd

    def _tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> OpenAIServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**vllm_env(), **self.env},
                start_new_session=True,  # its workers stop with it
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"the vLLM server exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise ServerError(f"the vLLM server did not answer /health in {START_TIMEOUT_S} s:\n{self._tail()}")

    def __exit__(self, *exc) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# vLLM's speculative-decoding counters (Prometheus names without the _total suffix)
SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
    "vllm:generation_tokens": "generation_tokens",
}


def spec_counters(url: str) -> dict[str, float]:
    """vLLM's counters of drafts, draft tokens, accepted tokens and generated tokens, from the
    server's ``/metrics`` (absent counters read 0)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = dict.fromkeys(SPEC_COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        key = SPEC_COUNTERS.get(family.name)
        if key is None:
            continue
        out[key] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out

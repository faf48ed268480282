"""The harness child's capture mode: the target's hidden states through vLLM's ``extract_hidden_states``.

A request with ``"capture": {...}`` (:class:`~.request.CaptureSpec`) loads the target with vLLM's
``extract_hidden_states`` speculative method (layers ``capture.layers``, vLLM's
``eagle_aux_hidden_state_layer_ids``) and the :mod:`~serving.vllm_plugin.hidden_states_connector`
connector, then runs the prompts one chunk at a time (``capture.chunks``: a directory name, the
prompt indices of each chunk and optionally an id per prompt) with one generated token each. The
states of a prompt with id ``i`` (default: its index) in chunk ``name`` go to
``<capture.out_dir>/<name>/<i>.safetensors`` (``hidden_states`` [num_prompt_tokens, num_layers,
hidden], ``token_ids``); when every file of a chunk is on disk the child writes
``<name>/DONE``, so the caller can turn finished chunks into shards while later ones run. The
result holds the seconds spent and the prompt tokens captured.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from serving.vllm_plugin.harness.request import VllmRequest

CONNECTOR = "HostHiddenStatesConnector"
CONNECTOR_MODULE = "serving.vllm_plugin.hidden_states_connector"
DONE = "DONE"


def capture_engine_args(req: VllmRequest, engine_args: dict) -> dict:
    """``engine_args`` plus the speculative and KV-transfer settings of a capture."""
    assert req.capture is not None
    return {
        **engine_args,
        "speculative_config": {
            "method": "extract_hidden_states",
            "num_speculative_tokens": 1,  # the method's only setting
            "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": req.capture.layers}},
        },
        "kv_transfer_config": {
            "kv_connector": CONNECTOR,
            "kv_connector_module_path": CONNECTOR_MODULE,
            "kv_role": "kv_producer",
            "kv_connector_extra_config": {
                "shared_storage_path": req.capture.out_dir,
                "allow_custom_save_path": True,
            },
        },
    }


def _wait_written(path: Path) -> None:
    """Block until the connector has written ``path`` (it holds ``<path>.lock`` until then)."""
    lock = Path(f"{path}.lock")
    if lock.exists():
        with lock.open() as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
        lock.unlink(missing_ok=True)
    if not path.is_file():
        raise RuntimeError(f"vLLM finished a capture request but wrote no {path}")


def run_capture(llm, req: VllmRequest) -> dict:
    """Capture every chunk of ``req.capture`` with the loaded engine ``llm``; return the totals."""
    from vllm import SamplingParams

    assert req.capture is not None
    out = Path(req.capture.out_dir)
    t0, tokens = time.perf_counter(), 0
    for chunk in req.capture.chunks:
        chunk_dir = out / chunk.name
        chunk_dir.mkdir(parents=True, exist_ok=True)
        paths = [chunk_dir / f"{i}.safetensors" for i in (chunk.ids or chunk.prompts)]
        params = [
            SamplingParams(
                max_tokens=1,
                temperature=0.0,
                detokenize=False,
                extra_args={"kv_transfer_params": {"hidden_states_path": str(p)}},
            )
            for p in paths
        ]
        prompts = [{"prompt_token_ids": req.prompts[i]} for i in chunk.prompts]
        llm.generate(prompts, params, use_tqdm=False)
        for p in paths:
            _wait_written(p)
        tokens += sum(len(req.prompts[i]) for i in chunk.prompts)
        tmp = chunk_dir / f".{DONE}.{os.getpid()}"
        tmp.write_text(str(len(paths)))
        os.replace(tmp, chunk_dir / DONE)
    return {"seconds": time.perf_counter() - t0, "prompt_tokens": tokens}

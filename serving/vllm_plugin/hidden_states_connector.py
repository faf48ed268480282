"""A KV-transfer connector that writes a request's captured hidden states to host files, on any device.

vLLM's ``extract_hidden_states`` speculative method stores the target's hidden states at the layers
named by ``eagle_aux_hidden_state_layer_ids`` in a cache-only attention layer, slot by slot like a
KV cache; a KV connector reads them out when the request finishes. vLLM's
``ExampleHiddenStatesConnector`` does that with a CUDA copy stream, CUDA events and pinned memory,
so it cannot run on a CPU build. :class:`HostHiddenStatesConnector` keeps its scheduler side (which
requests finish, which blocks hold them, where each file goes) and replaces the worker side: the
hidden states are gathered from the cache into host memory at once (a plain copy; on a GPU this
synchronises once per finished request) and written by a thread pool, each file to a temporary name
renamed into place, so a reader that sees ``<path>`` sees a whole file.

Each file holds ``hidden_states`` [num_prompt_tokens, num_layers, hidden] in the engine's dtype
and ``token_ids`` [num_prompt_tokens]. Select it with::

    kv_transfer_config={
        "kv_connector": "HostHiddenStatesConnector",
        "kv_connector_module_path": "serving.vllm_plugin.hidden_states_connector",
        "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": DIR, "allow_custom_save_path": True},
    }

A reader waits for a file as with the parent class: a shared ``flock`` on ``<path>.lock``, which the
worker holds from the step the request is scheduled until its file is written. Only tensor-parallel
rank 0 writes (every rank holds the whole hidden state).
"""

from __future__ import annotations

import os
from concurrent.futures import Future

import torch
from safetensors.torch import save_file
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    PendingSave,
    extract_from_kv_cache,
)


class _Done:
    """Stands in for the CUDA event the parent class polls: the host copy is already complete."""

    def query(self) -> bool:
        return True


def _write(tensors: dict[str, torch.Tensor], filename: str, lock_fd: int | None) -> None:
    tmp = f"{filename}.{os.getpid()}.tmp"
    try:
        save_file(tensors, tmp)
        os.replace(tmp, filename)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the reader's lock (use_synchronization_lock)


class HostHiddenStatesConnector(ExampleHiddenStatesConnector):
    """:class:`ExampleHiddenStatesConnector` without CUDA: host copies and atomic file writes."""

    def _submit_async_write(self, pending: PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        assert self._kv_cache is not None
        blocks = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(self._block_size, dtype=torch.long)
        slot_mapping = (blocks[:, None] * self._block_size + offsets[None, :]).flatten()
        num_tokens = pending.token_ids.shape[0]
        hidden = extract_from_kv_cache(self._kv_cache, slot_mapping.to(self._kv_cache.device), num_tokens)
        tensors = {"hidden_states": hidden.to("cpu", copy=True), "token_ids": pending.token_ids.clone()}
        assert pending.req_id not in self._req_futures, "two hidden-state saves for one request"
        os.makedirs(os.path.dirname(pending.filename) or ".", exist_ok=True)
        lock_fd = self._lock_fds.pop(pending.req_id, None)
        future: Future = self._executor.submit(_write, tensors, pending.filename, lock_fd)
        self._req_copy_events[pending.req_id] = _Done()  # type: ignore[assignment]
        self._req_futures[pending.req_id] = future
        future.add_done_callback(lambda f, req_id=pending.req_id: self._on_write_done(req_id, f))

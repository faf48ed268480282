"""A start-up check in vLLM: warn when a specforge draft is about to be served wrongly.

``register()`` is a ``vllm.general_plugins`` entry point. Unless ``SPECFORGE_DRAFT_CHECK=0``, it
wraps the EAGLE proposer's constructor: when vLLM builds a proposer for a draft directory that holds
``specforge_draft.json``, the plugin compares it with the speculative config and the target
(:func:`serving.draft_check.static_findings`: method, parallel drafting, aux layer ids, ``d2t``, target fingerprint)
and logs one warning per finding. It never raises and never changes what vLLM does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from serving.draft_check import META_FILE, deployment_from_dirs, read_meta, static_findings

logger = logging.getLogger("specforge.draft_check")
ENV = "SPECFORGE_DRAFT_CHECK"
_DONE = False


def check_vllm_config(vllm_config) -> list[str]:
    """The findings for a vLLM config (as warnings' texts); [] when all is well or nothing to check."""
    spec = getattr(vllm_config, "speculative_config", None)
    draft_cfg = getattr(spec, "draft_model_config", None) if spec is not None else None
    draft_dir = getattr(draft_cfg, "model", None)
    if not draft_dir or not (Path(draft_dir) / META_FILE).is_file():
        return []
    meta = read_meta(draft_dir)
    deploy = deployment_from_dirs(
        vllm_config.model_config.model,
        draft_dir,
        str(spec.method),
        int(spec.num_speculative_tokens),
        bool(getattr(spec, "parallel_drafting", False)),
    )
    return [f.message for f in static_findings(meta, deploy)]


def register() -> None:
    global _DONE
    if _DONE or os.environ.get(ENV, "1") == "0":
        return
    _DONE = True
    try:
        from vllm.v1.spec_decode.eagle import EagleProposer

        original = EagleProposer.__init__

        def __init__(self, vllm_config, *args, **kwargs):
            original(self, vllm_config, *args, **kwargs)
            try:
                findings = check_vllm_config(vllm_config)
            except Exception as e:  # never take the server down
                logger.warning("specforge: the draft start-up check could not run: %s", e)
                return
            for msg in findings:
                logger.warning("specforge draft check: %s", msg)
            if not findings and getattr(vllm_config, "speculative_config", None) is not None:
                logger.info("specforge draft check: the draft matches its speculative config and target")

        EagleProposer.__init__ = __init__
    except Exception as e:  # pragma: no cover - defensive: never take vLLM down
        logger.warning("specforge: the draft start-up check is not installed: %s", e)

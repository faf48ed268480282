"""Targets: the frozen models drafts are trained for.

* :mod:`.loader`: load any local Hugging Face causal-LM directory (:func:`~.loader.load_target`);
* :mod:`.tiny`: build the embedded 1.7M-parameter tiny target, for fast tests and ``--target tiny``;
* :mod:`.unlikelihood`: the tiny target's sequence-level unlikelihood phase.
"""

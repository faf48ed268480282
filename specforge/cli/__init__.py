"""The ``specforge`` command.

* :mod:`.parser`: the parser and :func:`main`;
* :mod:`.commands`: ``target``, ``data``, ``capture``, ``train``, ``export``, ``demo``;
* :mod:`.bench`: ``bench vllm|acceptance|serve|pool`` and ``calibrate``; :mod:`.bench_heads`: ``bench heads``;
* :mod:`.options`: what several commands share (``--target`` and the default target, value parsing,
  path checks, the repeated options).
"""

from specforge.cli.parser import main

__all__ = ["main"]

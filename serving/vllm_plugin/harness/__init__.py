"""The benchmark harness: runs the real vLLM for specforge's benchmarks; vLLM never loads it.

* :mod:`.runner`: :func:`~.runner.run_vllm`, the subprocess front door (no vllm import);
* :mod:`.child`: the child process's entry point (one generate, a sweep, a lockstep sweep);
* :mod:`.sweeps`: paired sweeps on one engine; :mod:`.lockstep`: one engine per arm, stepped in turn;
* :mod:`.counters`: vLLM's counters, the plugin's step recorder, the scheduler.
"""

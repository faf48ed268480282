"""The lockstep benchmark's bookkeeping: an engine's own clock and its closed loop of clients."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from serving.vllm_plugin.harness.lockstep import ClosedLoop, EngineClock


class CountingEngine:
    """Stands in for ``LLMEngine`` in the loop's bookkeeping: every request gets one token per step
    (its prompt's first id plus the step) and ends after ``length`` tokens; each step takes ``cost``
    seconds."""

    def __init__(self, length: int, cost: float = 0.0):
        self.length, self.cost = length, cost
        self.live: dict[str, list[int]] = {}
        self.first: dict[str, int] = {}

    def add_request(self, rid, prompt, params):
        self.live[rid], self.first[rid] = [], prompt["prompt_token_ids"][0]

    def has_unfinished_requests(self):
        return bool(self.live)

    def step(self):
        time.sleep(self.cost)
        outs = []
        for rid, toks in list(self.live.items()):
            toks.append(self.first[rid] + len(toks))
            done = len(toks) == self.length
            outs.append(
                SimpleNamespace(request_id=rid, finished=done, outputs=[SimpleNamespace(token_ids=toks[-1:])])
            )
            if done:
                del self.live[rid]
        return outs


def test_the_engine_clock_stops_outside_its_ticks():
    clock = EngineClock()
    start = clock()
    clock.enter()
    time.sleep(0.02)
    clock.leave()
    time.sleep(0.05)  # another engine's turn
    assert clock() - start == pytest.approx(0.02, abs=0.01)
    clock.enter()
    time.sleep(0.02)
    assert clock() - start == pytest.approx(0.04, abs=0.015)  # running: the clock moves again
    clock.leave()


def test_closed_loop_keeps_b_in_flight_and_times_only_its_own_steps():
    engine = CountingEngine(length=3, cost=0.004)
    prompts = [{"prompt_token_ids": [100 * i]} for i in range(6)]
    loop = ClosedLoop(engine, None, prompts, 2, EngineClock(), "m1")
    while loop.active:
        loop.tick()
        assert len(engine.live) <= 2
        time.sleep(0.05)  # other engines' steps: not this engine's time
    res = loop.result()
    # 6 requests x 3 tokens, two clients: requests 4 and 5 are sent at step 6; the window ends when
    # request 4 ends (step 9), nothing left to send: 17 tokens (request 5's last one comes after)
    assert loop.steps == 9 and res["output_tokens"] == 18
    assert 9 * 0.004 <= res["seconds"] < 0.2  # 8 x 0.05 s between the ticks are left out
    assert res["tokens_per_s"] == pytest.approx(17 / res["seconds"], rel=0.05)
    assert 3 * 0.004 <= res["latency_mean"] < 0.1
    again = ClosedLoop(CountingEngine(length=3), None, prompts, 2, EngineClock(), "m2")
    while again.active:
        again.tick()
    assert again.result()["outputs_sha"] == res["outputs_sha"]  # outputs in submission order
    other = ClosedLoop(CountingEngine(length=2), None, prompts, 2, EngineClock(), "m3")
    while other.active:
        other.tick()
    assert other.result()["outputs_sha"] != res["outputs_sha"]


def test_a_vllm_run_past_its_timeout_is_one_clear_error(tmp_path, monkeypatch):
    """A sweep round that runs too long raises RuntimeError naming the limit and the request, not a
    subprocess traceback (bench serve then names the file holding the finished rounds' rows)."""
    import subprocess

    from serving.vllm_plugin.harness import runner

    def slow(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(runner.subprocess, "run", slow)
    with pytest.raises(RuntimeError, match=r"did not finish within 5 s \(request: .*vllm_request.json\)"):
        runner.run_vllm({"target": "t", "prompts": [], "max_tokens": 1}, tmp_path / "run", timeout=5)

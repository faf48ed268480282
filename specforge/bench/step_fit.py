"""Fitting ``calibrate --vllm``'s timed steps into the plugin's step costs.

Contract: :func:`step_table` turns the step recorder's cells (median seconds per batch size and k)
into a :class:`~serving.step_cost.StepTable`, one least-squares line over batch size per k;
:func:`start_cost` turns its start steps into a :class:`~serving.step_cost.StartCost`. Pure
Python, no vLLM.
"""

from __future__ import annotations

from serving.shape import TreeShape
from serving.step_cost import Profile, StartCost, StepTable
from specforge.errors import SpecforgeError


def step_table(cells: list[dict], ks: list[int], min_steps: int = 3) -> StepTable:
    """A :class:`StepTable` from recorded cells: per k, a straight line ``a + b x batch`` fitted by least
    squares to every batch size timed ``min_steps`` times or more, each weighted by its steps.

    Cells are medians of a few dozen steps and still vary by ~10 %; k = 2-5 differ by less than that
    at one batch size, so interpolating the raw cells let noise decide, and the monotone cap then
    carried a noisy dip at one batch size to every larger one. A line per k keeps the batch
    dependence (the step times measured here are close to linear in the batch) without the noise.
    """
    seconds = {}
    for k in ks:
        pts = [
            (c["batch_size"], c["seconds"], c["steps"])
            for c in cells
            if c["k"] == k and c["steps"] >= min_steps
        ]
        if not pts:
            continue
        lo, hi = min(b for b, _, _ in pts), max(b for b, _, _ in pts)
        a, slope = _weighted_line(pts)
        seconds[k] = Profile([lo, hi], [a + slope * lo, a + slope * hi]) if hi > lo else Profile([lo], [a])
    if 0 not in seconds:
        raise SpecforgeError("calibration timed no step without speculation: raise max_tokens")
    return StepTable.chains(seconds)


def start_cost(
    starts: dict[str, list[list[float]]],
    table: StepTable,
    finished: dict,
    max_tokens: int,
    min_steps: int = 3,
) -> StartCost | None:
    """What a step pays per request it starts, per k, from recorded start steps (``[batch, started,
    seconds]``): the slope, over the requests started, of each step's time beyond a decode step of
    its batch size at its k (the step table's). The intercept is left out: a step's fixed cost is in
    the decode step already, and a burst's start step holds every request of its batch. A k with
    fewer than ``min_steps`` start steps, or one size of start only, gets no figure of its own.
    Tokens per request: the calibration's finished requests (``max_tokens`` if none finished)."""
    seconds: dict[TreeShape, float] = {}
    for key, rows in starts.items():
        k = int(key)
        shape = TreeShape.chain(k)
        if shape not in table.seconds or len(rows) < min_steps or len({r[1] for r in rows}) < 2:
            continue
        _, slope = _weighted_line([(int(n), sec - table.step_time(int(b), shape), 1) for b, n, sec in rows])
        seconds[shape] = slope
    if not seconds:
        return None
    n, tokens = int(finished.get("requests", 0)), int(finished.get("tokens", 0))
    return StartCost(seconds, tokens / n if n and tokens else float(max_tokens))


def _weighted_line(pts: list[tuple[int, float, int]]) -> tuple[float, float]:
    """Intercept and slope (>= 0) of the least-squares line through (x, y) points with weights w."""
    w = sum(p[2] for p in pts)
    mx = sum(x * n for x, _, n in pts) / w
    my = sum(y * n for _, y, n in pts) / w
    sxx = sum(n * (x - mx) ** 2 for x, _, n in pts)
    slope = max(0.0, sum(n * (x - mx) * (y - my) for x, y, n in pts) / sxx) if sxx > 0 else 0.0
    return my - slope * mx, slope

"""Step cost: what one speculative decode step takes, predicted from measurements.

Contract
--------
* :class:`CostModel` predicts one decode step's time from profiled timings: the target's forward
  time as a function of the number of query tokens in the batch, and the draft's per-depth
  forward time likewise (piecewise-linear interpolation, linear extrapolation past the last point).
  A step at batch ``B`` with shape ``(depth, top_k, N)`` costs
  ``target(B * (1 + N)) + draft(B) + (depth - 1) * draft(B * top_k)`` (``N = 0``: ``target(B)``);
  a drafter that runs one sequence at a time pays ``B * (draft(1) + (depth - 1) * draft(top_k))``;
  a parallel drafter (P-EAGLE, chains only) pays one pass, ``draft(B * depth)``.
* :class:`StepTable` is the other cost model: whole measured server steps (vLLM's or the reference
  engine's, drafting, verification and their own overheads included) per shape and batch size,
  interpolated over batch size. :class:`OnlineStepCost` wraps either one and corrects it with the step times the
  server measures live: the prior times a live/prior ratio (EMA), learnt per shape over all batch
  sizes once the shape has been seen ``min_count`` times, and over all steps before that.
* :class:`StartCost` is what a step pays, beyond its decode time, for each request it starts (the
  prompt's prefill; with a draft, the draft's pass over the prompt too), per shape, and the mean
  output tokens of a request, learnt online from finished requests. Starts come at one per request,
  so a token costs ``start(shape) / tokens_per_request`` on top of its share of the decode step.

Pure Python, no torch.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from serving.shape import NO_SPECULATION, TreeShape


def isotonic(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in squared error (pool adjacent violators).

    More tokens never take less time; a timing spike is averaged with its neighbours instead of being
    carried to every larger size, as a running maximum would."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]
    return [m for m, n in blocks for _ in range(int(n))]


@dataclass
class Profile:
    """Measured (tokens, seconds) points of one forward, tokens ascending."""

    tokens: list[int]
    seconds: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.seconds) or not self.tokens:
            raise ValueError("a profile needs as many times as token counts, and at least one")
        if self.tokens != sorted(set(self.tokens)):
            raise ValueError("profile token counts must strictly ascend")
        self.seconds = isotonic(self.seconds)

    def __call__(self, n: float) -> float:
        """Seconds for ``n`` tokens: interpolated, flat below the first point, extrapolated above the last."""
        t, s = self.tokens, self.seconds
        if len(t) == 1:
            return s[0] * max(1.0, n / t[0])
        if n <= t[0]:
            return s[0]
        i = min(bisect.bisect_left(t, n), len(t) - 1)
        x0, x1, y0, y1 = t[i - 1], t[i], s[i - 1], s[i]
        return y0 + (y1 - y0) / (x1 - x0) * (n - x0)


@dataclass
class CostModel:
    target: Profile
    draft: Profile | None = None
    # False for a drafter that runs one sequence at a time (the reference engine's): drafting then
    # costs batch x (draft(1) + (depth - 1) x draft(top_k)) instead of one batched pass per depth.
    batched_drafts: bool = True
    # True for a parallel-drafting head (P-EAGLE): one draft pass a step over the verified tokens and
    # depth - 1 mask slots, so drafting costs draft(batch * depth), about flat in depth where a
    # forward's fixed overhead dominates, instead of one pass per depth
    parallel_drafts: bool = False

    def step_time(self, batch: int, shape: TreeShape) -> float:
        if shape.is_none or self.draft is None:
            return self.target(batch)
        if self.parallel_drafts:
            drafting = self.draft(batch * shape.depth)
        elif self.batched_drafts:
            drafting = self.draft(batch) + (shape.depth - 1) * self.draft(batch * shape.top_k)
        else:
            drafting = batch * (self.draft(1) + (shape.depth - 1) * self.draft(shape.top_k))
        return self.target(batch * (1 + shape.num_draft_tokens)) + drafting

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        payload = {
            "target": asdict(self.target),
            "draft": asdict(self.draft) if self.draft else None,
            "parallel_drafts": self.parallel_drafts,
            "meta": meta or {},
        }
        p = Path(path)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        raw = json.loads(Path(path).read_text())
        return cls(
            Profile(**raw["target"]),
            Profile(**raw["draft"]) if raw.get("draft") else None,
            parallel_drafts=bool(raw.get("parallel_drafts", False)),
        )


class StepCost(Protocol):
    def step_time(self, batch: int, shape: TreeShape) -> float: ...


def shape_key(shape: TreeShape) -> str:
    """A shape as a JSON key, ``"tokens:depth:top_k"``."""
    return f"{shape.num_draft_tokens}:{shape.depth}:{shape.top_k}"


def key_shape(key: str) -> TreeShape:
    """Reads :func:`shape_key`, and chains keyed by k alone (0: no speculation)."""
    if ":" in key:
        n, d, t = (int(x) for x in key.split(":"))
        return TreeShape(num_draft_tokens=n, depth=d, top_k=t)
    return TreeShape.chain(int(key))


def _label(shape: TreeShape) -> str:
    if shape.top_k == 1 and shape.depth == max(1, shape.num_draft_tokens):
        return f"k={shape.num_draft_tokens}"
    return f"tree depth {shape.depth}, top-k {shape.top_k}, {shape.num_draft_tokens} tokens"


@dataclass
class StepTable:
    """Measured seconds of one whole server step, per shape (no speculation included) and batch size."""

    seconds: dict[TreeShape, Profile]  # shape -> Profile over batch size

    def __post_init__(self) -> None:
        if NO_SPECULATION not in self.seconds:
            raise ValueError("a step table needs the step time without speculation (k = 0)")

    @classmethod
    def chains(cls, seconds: dict[int, Profile]) -> StepTable:
        """A table of chains keyed by k (0: no speculation)."""
        return cls({TreeShape.chain(k): p for k, p in seconds.items()})

    @property
    def shapes(self) -> list[TreeShape]:
        return sorted(self.seconds)

    @property
    def ks(self) -> list[int]:
        """The chain lengths measured (0 included)."""
        return [s.num_draft_tokens for s in self.shapes if s.top_k == 1]

    def step_time(self, batch: int, shape: TreeShape) -> float:
        if shape not in self.seconds:
            raise KeyError(
                f"no measured step time for {_label(shape)} (measured: {[_label(s) for s in self.shapes]})"
            )
        return self.seconds[shape](batch)

    def to_json(self) -> dict:
        """Keys ``"tokens:depth:top_k"`` (:func:`shape_key`)."""
        return {shape_key(s): asdict(p) for s, p in sorted(self.seconds.items())}

    @classmethod
    def from_json(cls, raw: dict) -> StepTable:
        """Reads :meth:`to_json`, and tables of chains keyed by k alone."""
        return cls({key_shape(key): Profile(**p) for key, p in raw.items()})


@dataclass
class OnlineStepCost:
    """A prior step cost corrected by live step times (see the module contract).

    The correction is a factor on the prior, learnt per shape and pooled over batch sizes (the prior
    keeps the batch dependence): one step time is noisy, a factor over many steps of any batch size
    is not. A shape seen fewer than ``min_count`` times uses the factor of all steps seen.

    With ``cell_prior`` set, each (shape, batch bucket) also learns its own measured / prior ratio
    (a running mean, then an EMA of weight ``cell_beta``: it follows the machine as fast as steps
    of that cell come), and a step's factor blends it with the shape's factor above, by
    ``n / (n + cell_prior)`` for ``n`` steps of that cell seen. This fixes a prior that ranks shapes
    wrongly at some batch sizes, which one factor cannot (it scales every shape alike); a shape
    never run in a bucket keeps the prior times the overall factor there (the plugin probes near-best
    shapes now and then, :class:`~serving.vllm_plugin.lookup.AdaptiveLookup`). Buckets are powers
    of two: batch 1, 2-3, 4-7, ... (:func:`batch_bucket`).
    """

    prior: StepCost
    beta: float = 0.05
    min_count: int = 16
    scale: float = 1.0  # EMA of measured / prior over all observed steps
    shape_scale: dict[TreeShape, float] = field(default_factory=dict)  # EMA of measured / prior per shape
    count: dict[TreeShape, int] = field(default_factory=dict)
    cell_prior: float | None = None  # pseudo-steps of the shape's factor per (shape, bucket); None: off
    cell_beta: float = 0.1
    cell_ratio: dict[tuple[TreeShape, int], float] = field(default_factory=dict)  # measured / prior
    cell_count: dict[tuple[TreeShape, int], int] = field(default_factory=dict)

    def observe(self, batch: int, shape: TreeShape, seconds: float) -> None:
        ratio = seconds / self.prior.step_time(batch, shape)
        n = self.count.get(shape, 0)
        prev = self.shape_scale.get(shape, self.scale)
        self.shape_scale[shape] = (1 - self.beta) * prev + self.beta * ratio
        self.count[shape] = n + 1
        self.scale = (1 - self.beta) * self.scale + self.beta * ratio
        if self.cell_prior is not None:
            cell = (shape, batch_bucket(batch))
            m = self.cell_count.get(cell, 0)
            weight = max(self.cell_beta, 1.0 / (m + 1))
            self.cell_ratio[cell] = (1 - weight) * self.cell_ratio.get(cell, ratio) + weight * ratio
            self.cell_count[cell] = m + 1

    def factor(self, shape: TreeShape, batch: int | None = None) -> float:
        """Measured / prior for ``shape`` (at ``batch``: with its bucket's own ratio, when learnt)."""
        f = self.shape_scale[shape] if self.count.get(shape, 0) >= self.min_count else self.scale
        if self.cell_prior is None or batch is None:
            return f
        cell = (shape, batch_bucket(batch))
        n = self.cell_count.get(cell, 0)
        if not n:
            return f
        w = n / (n + self.cell_prior)
        return (1 - w) * f + w * self.cell_ratio[cell]

    def step_time(self, batch: int, shape: TreeShape) -> float:
        return self.prior.step_time(batch, shape) * self.factor(shape, batch)


def batch_bucket(batch: int) -> int:
    """The power-of-two bucket of a batch size: 1 -> 1, 2-3 -> 2, 4-7 -> 3, ..."""
    return max(int(batch), 1).bit_length()


@dataclass
class StartCost:
    """Seconds a step pays, beyond its decode time, per request it starts, by shape; and the mean
    output tokens of a request (an EMA over finished requests, seeded by calibration).

    A shape without its own figure pays the mean of the speculative shapes' (a draft runs over every
    prompt whatever k is); no speculation without one pays the same (vLLM's own k = 0 runs the draft
    too; only a k = 0 that skips the draft has its own, smaller, figure)."""

    seconds: dict[TreeShape, float]  # shape -> seconds per request started
    tokens_per_request: float
    beta: float = 0.02  # weight of one finished request in the EMA of tokens_per_request
    # Online, one factor for all shapes: EMAs of the seconds start steps took beyond a decode step,
    # and of what ``seconds`` predicted for them (a ratio of sums: a step's excess is noisy, may be
    # negative, and a skipped draft's start may be priced near 0).
    start_beta: float = 0.02
    min_starts: int = 16
    excess: float = 0.0
    expected: float = 0.0
    starts: int = 0

    def __post_init__(self) -> None:
        if self.tokens_per_request <= 0:
            raise ValueError("tokens_per_request must be positive")
        if any(v < 0 for v in self.seconds.values()):
            raise ValueError("start costs must be >= 0 seconds")

    def prior(self, shape: TreeShape) -> float:
        """The calibrated seconds per request started."""
        if shape in self.seconds:
            return self.seconds[shape]
        spec = [v for s, v in self.seconds.items() if not s.is_none]
        return sum(spec) / len(spec) if spec else self.seconds.get(NO_SPECULATION, 0.0)

    @property
    def scale(self) -> float:
        """Measured / calibrated start cost, once ``min_starts`` start steps were seen (within 1/4-4)."""
        if self.starts < self.min_starts or self.expected <= 0:
            return 1.0
        return min(4.0, max(0.25, self.excess / self.expected))

    def per_request(self, shape: TreeShape) -> float:
        return self.prior(shape) * self.scale

    def observe_start(self, shape: TreeShape, started: int, excess: float) -> None:
        """A step started ``started`` requests and took ``excess`` seconds beyond its decode time."""
        b = self.start_beta
        self.excess = (1 - b) * self.excess + b * excess
        self.expected = (1 - b) * self.expected + b * started * self.prior(shape)
        self.starts += 1

    def per_token(self, shape: TreeShape) -> float:
        """Seconds each output token carries for its request's start."""
        return self.per_request(shape) / self.tokens_per_request

    def observe_request(self, tokens: int) -> None:
        """A request finished after emitting ``tokens`` tokens."""
        if tokens > 0:
            self.tokens_per_request = (1 - self.beta) * self.tokens_per_request + self.beta * tokens

    def to_json(self) -> dict:
        return {
            "seconds": {shape_key(s): v for s, v in sorted(self.seconds.items())},
            "tokens_per_request": self.tokens_per_request,
        }

    @classmethod
    def from_json(cls, raw: dict) -> StartCost:
        seconds = {key_shape(key): float(v) for key, v in raw["seconds"].items()}
        return cls(seconds, float(raw["tokens_per_request"]))

"""Adaptive speculation: pick the draft shape that maximises goodput at the live batch size.

Contract
--------
* :class:`CostModel` predicts one decode step's time from profiled timings: the target's forward
  time as a function of the number of query tokens in the batch, and the draft's per-depth
  forward time likewise (piecewise-linear interpolation, linear extrapolation past the last point).
  A step at batch ``B`` with shape ``(depth, top_k, N)`` costs
  ``target(B * (1 + N)) + draft(B) + (depth - 1) * draft(B * top_k)`` (``N = 0``: ``target(B)``);
  a drafter that runs one sequence at a time pays ``B * (draft(1) + (depth - 1) * draft(top_k))``.
* :class:`StepTable` is the other cost model: whole measured server steps (vLLM's or the reference
  engine's, drafting, verification and their own overheads included) per shape and batch size,
  interpolated over batch size. :class:`OnlineStepCost` wraps either one and corrects it with the step times the
  server measures live: the prior times a live/prior ratio (EMA), learnt per shape over all batch
  sizes once the shape has been seen ``min_count`` times, and over all steps before that.
* :class:`AcceptanceTracker` keeps, per shape, an EMA of the tokens emitted per sequence per step
  (tau, bonus included), seeded from an offline estimate (the trained head's alpha_k for chains);
  or, given each sequence's accepted count, an EMA of the acceptance at each chain position.
* :class:`StartCost` is what a step pays, beyond its decode time, for each request it starts (the
  prompt's prefill; with a draft, the draft's pass over the prompt too), per shape, and the mean
  output tokens of a request, learnt online from finished requests. Starts come at one per request,
  so a token costs ``start(shape) / tokens_per_request`` on top of its share of the decode step.
* :class:`SpeculationPolicy.choose` returns the candidate maximising
  ``goodput = B * tau(shape) / (step_time(B, shape) + B * tau(shape) * start(shape) / tokens_per_request)``
  (without a :class:`StartCost`: ``B * tau / step_time``), with "no speculation" (tau = 1) always a
  candidate. Choices are *monotone*: for the same statistics, a larger batch never gets more
  speculation (shapes are ordered by draft tokens, then depth, then top-k; the choice at ``B`` is
  the best shape no more speculative than the choice at ``B - 1``). ``choose`` takes the expected
  tau of the live batch when the caller knows it (:class:`RequestAcceptance`).

Pure Python, no torch: the engine, the vLLM plugin and the tests drive it the same way.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from serving.shape import NO_SPECULATION, TreeShape

Shape = TreeShape  # the policy speaks of the same shapes the engine runs
NONE = NO_SPECULATION


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

    def step_time(self, batch: int, shape: Shape) -> float:
        if shape.is_none or self.draft is None:
            return self.target(batch)
        if self.batched_drafts:
            drafting = self.draft(batch) + (shape.depth - 1) * self.draft(batch * shape.top_k)
        else:
            drafting = batch * (self.draft(1) + (shape.depth - 1) * self.draft(shape.top_k))
        return self.target(batch * (1 + shape.num_draft_tokens)) + drafting

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        payload = {
            "target": asdict(self.target),
            "draft": asdict(self.draft) if self.draft else None,
            "meta": meta or {},
        }
        p = Path(path)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        raw = json.loads(Path(path).read_text())
        return cls(Profile(**raw["target"]), Profile(**raw["draft"]) if raw.get("draft") else None)


class StepCost(Protocol):
    def step_time(self, batch: int, shape: Shape) -> float: ...


def shape_key(shape: Shape) -> str:
    """A shape as a JSON key, ``"tokens:depth:top_k"``."""
    return f"{shape.num_draft_tokens}:{shape.depth}:{shape.top_k}"


def key_shape(key: str) -> Shape:
    """Reads :func:`shape_key`, and chains keyed by k alone (0: no speculation)."""
    if ":" in key:
        n, d, t = (int(x) for x in key.split(":"))
        return Shape(num_draft_tokens=n, depth=d, top_k=t)
    return NONE if int(key) == 0 else Shape.chain(int(key))


def _label(shape: Shape) -> str:
    if shape.top_k == 1 and shape.depth == max(1, shape.num_draft_tokens):
        return f"k={shape.num_draft_tokens}"
    return f"tree depth {shape.depth}, top-k {shape.top_k}, {shape.num_draft_tokens} tokens"


@dataclass
class StepTable:
    """Measured seconds of one whole server step, per shape (no speculation included) and batch size."""

    seconds: dict[Shape, Profile]  # shape -> Profile over batch size

    def __post_init__(self) -> None:
        if NONE not in self.seconds:
            raise ValueError("a step table needs the step time without speculation (k = 0)")

    @classmethod
    def chains(cls, seconds: dict[int, Profile]) -> StepTable:
        """A table of chains keyed by k (0: no speculation)."""
        return cls({(NONE if k == 0 else Shape.chain(k)): p for k, p in seconds.items()})

    @property
    def shapes(self) -> list[Shape]:
        return sorted(self.seconds)

    @property
    def ks(self) -> list[int]:
        """The chain lengths measured (0 included)."""
        return [s.num_draft_tokens for s in self.shapes if s.top_k == 1]

    def step_time(self, batch: int, shape: Shape) -> float:
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
    """

    prior: StepCost
    beta: float = 0.05
    min_count: int = 16
    scale: float = 1.0  # EMA of measured / prior over all observed steps
    shape_scale: dict[Shape, float] = field(default_factory=dict)  # EMA of measured / prior per shape
    count: dict[Shape, int] = field(default_factory=dict)

    def observe(self, batch: int, shape: Shape, seconds: float) -> None:
        ratio = seconds / self.prior.step_time(batch, shape)
        n = self.count.get(shape, 0)
        prev = self.shape_scale.get(shape, self.scale)
        self.shape_scale[shape] = (1 - self.beta) * prev + self.beta * ratio
        self.count[shape] = n + 1
        self.scale = (1 - self.beta) * self.scale + self.beta * ratio

    def factor(self, shape: Shape) -> float:
        return self.shape_scale[shape] if self.count.get(shape, 0) >= self.min_count else self.scale

    def step_time(self, batch: int, shape: Shape) -> float:
        return self.prior.step_time(batch, shape) * self.factor(shape)


@dataclass
class StartCost:
    """Seconds a step pays, beyond its decode time, per request it starts, by shape; and the mean
    output tokens of a request (an EMA over finished requests, seeded by calibration).

    A shape without its own figure pays the mean of the speculative shapes' (a draft runs over every
    prompt whatever k is); no speculation without one pays the same (vLLM's own k = 0 runs the draft
    too; only a k = 0 that skips the draft has its own, smaller, figure)."""

    seconds: dict[Shape, float]  # shape -> seconds per request started
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

    def prior(self, shape: Shape) -> float:
        """The calibrated seconds per request started."""
        if shape in self.seconds:
            return self.seconds[shape]
        spec = [v for s, v in self.seconds.items() if not s.is_none]
        return sum(spec) / len(spec) if spec else self.seconds.get(NONE, 0.0)

    @property
    def scale(self) -> float:
        """Measured / calibrated start cost, once ``min_starts`` start steps were seen (within 1/4-4)."""
        if self.starts < self.min_starts or self.expected <= 0:
            return 1.0
        return min(4.0, max(0.25, self.excess / self.expected))

    def per_request(self, shape: Shape) -> float:
        return self.prior(shape) * self.scale

    def observe_start(self, shape: Shape, started: int, excess: float) -> None:
        """A step started ``started`` requests and took ``excess`` seconds beyond its decode time."""
        b = self.start_beta
        self.excess = (1 - b) * self.excess + b * excess
        self.expected = (1 - b) * self.expected + b * started * self.prior(shape)
        self.starts += 1

    def per_token(self, shape: Shape) -> float:
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


def conditional_acceptance(accepted_at_position: list[float], total: float) -> list[float]:
    """alpha_k = P(position k accepted | positions < k accepted), from counts (or rates) of
    "position k accepted" out of ``total`` verification steps."""
    out, prev = [], total
    for c in accepted_at_position:
        out.append(c / prev if prev else 0.0)
        prev = c
    return out


def alpha_from_histograms(histograms: dict[int, list[int]], min_trials: int = 200) -> list[float]:
    """Conditional acceptance alpha_1.. measured on chains of several lengths.

    ``histograms[k][j]``: the request-steps that verified a k-token chain and accepted exactly j of
    its tokens (``len == k + 1``). Position i is tried by every chain with k >= i whose first i - 1
    tokens were accepted, so alpha_i = #(accepted >= i) / #(accepted >= i - 1) over those chains.
    The list stops before the first position with fewer than ``min_trials`` trials."""
    out: list[float] = []
    for i in range(1, max(histograms, default=0) + 1):
        reached = tried = 0
        for k, hist in histograms.items():
            if k >= i:
                tried += sum(hist[i - 1 :])
                reached += sum(hist[i:])
        if tried < min_trials:
            break
        out.append(reached / tried)
    return out


def chain_tau(alpha: list[float], k: int) -> float:
    """Expected tokens per step of a k-token chain from conditional acceptances alpha_1..: 1 + sum prod."""
    tau, run = 1.0, 1.0
    for i in range(k):
        run *= alpha[i] if i < len(alpha) else (alpha[-1] if alpha else 0.0)
        tau += run
    return tau


def _is_chain(shape: Shape) -> bool:
    return shape.top_k == 1 and shape.depth == shape.num_draft_tokens


@dataclass
class AcceptanceTracker:
    """tau per shape, learnt online; shapes never observed fall back to their seed.

    Two ways to learn: an EMA of tau per shape (from the mean tokens a step emits per sequence), or,
    when each step reports every sequence's accepted count (``per_position``), an EMA of the
    conditional acceptance at each chain position, from which every chain's tau follows
    (:func:`chain_tau`). The second lets a server running k = 3 learn what k = 5 would accept at
    positions 1-3, instead of comparing a measured k = 3 with a merely seeded k = 5.
    """

    seed: dict[Shape, float]
    beta: float = 0.05  # weight of a new observation
    ema: dict[Shape, float] = field(default_factory=dict)
    alpha: list[float] = field(default_factory=list)  # live conditional acceptance per chain position
    per_position: bool = False
    reference_batch: int = 1  # per-position learning: a step of this many sequences weighs ``beta``

    @classmethod
    def from_alpha(
        cls,
        alpha: list[float],
        shapes: list[Shape],
        beta: float = 0.05,
        per_position: bool = False,
        reference_batch: int = 1,
    ) -> AcceptanceTracker:
        """Seed every shape from chain acceptances: a tree is seeded as the chain of its depth
        (conservative: a tree accepts at least what its best path would)."""
        seed = {s: (1.0 if s.is_none else chain_tau(alpha, min(s.depth, s.num_draft_tokens))) for s in shapes}
        return cls(
            seed=seed,
            beta=beta,
            alpha=list(alpha),
            per_position=per_position,
            reference_batch=reference_batch,
        )

    def tau(self, shape: Shape) -> float:
        if shape.is_none:
            return 1.0
        if self.per_position and self.alpha and _is_chain(shape):
            return chain_tau(self.alpha, shape.num_draft_tokens)
        return self.ema.get(shape, self.seed.get(shape, 1.0))

    def observe(self, shape: Shape, emitted_per_sequence: float, accepted: list[int] | None = None) -> None:
        """``accepted``: each sequence's accepted draft tokens this step (per-position learning)."""
        if shape.is_none:
            return
        if self.per_position and accepted and _is_chain(shape):
            self.observe_verified([shape.num_draft_tokens] * len(accepted), accepted)
            return
        prev = self.tau(shape)
        self.ema[shape] = (1 - self.beta) * prev + self.beta * emitted_per_sequence

    def observe_verified(self, verified: list[int], accepted: list[int]) -> None:
        """Per-position learning from one step of any shape mix: request ``j`` verified a chain of
        ``verified[j]`` drafts and accepted the first ``accepted[j]``. Position ``i + 1`` was tried by
        the requests with ``verified > i`` and ``accepted >= i``, and accepted by those with
        ``accepted > i``; a step weighs as many request-steps as tried the position (a step of 2
        straggling requests must not count as much as a step of 64)."""
        longest = max(verified, default=0)
        while len(self.alpha) < longest:  # positions past the seed start from the last seeded one
            self.alpha.append(self.alpha[-1] if self.alpha else 0.5)
        for i in range(longest):
            tried = hits = 0
            for v, a in zip(verified, accepted):
                if v > i and a >= i:
                    tried += 1
                    hits += a > i
            if not tried:
                break
            beta = 1 - (1 - self.beta) ** (tried / self.reference_batch)
            self.alpha[i] = (1 - beta) * self.alpha[i] + beta * hits / tried


@dataclass
class RequestAcceptance:
    """Acceptance of each sequence in flight, for the sequences in the live batch.

    Acceptance varies far more between sequences (and along one sequence) than between steps: the
    sequences still running at the end of a batch are mostly the ones the draft predicts badly. Each
    sequence keeps decayed counts of "position i reached" and "position i accepted"; its conditional
    acceptance at position i is ``(accepted_i + w * alpha_i) / (reached_i + w)``, shrunk towards the
    population's ``alpha_i`` with ``w = prior_weight`` pseudo-steps. :meth:`chain_taus` averages each
    chain's tau over the given sequences (a sequence never seen counts at the population's alpha).
    """

    prior_weight: float = 1.0
    decay: float = 0.8  # weight of a sequence's previous counts at each new step
    hits: dict[str, list[float]] = field(default_factory=dict)  # sequence -> accepted, per position
    trials: dict[str, list[float]] = field(default_factory=dict)  # sequence -> reached, per position

    def observe(self, seq: str, verified: int, accepted: int) -> None:
        """One step of one sequence: ``accepted`` of its ``verified`` draft tokens were accepted."""
        if verified <= 0:
            return
        hits, trials = self.hits.setdefault(seq, []), self.trials.setdefault(seq, [])
        while len(hits) < verified:
            hits.append(0.0)
            trials.append(0.0)
        for i in range(len(hits)):
            hits[i] *= self.decay
            trials[i] *= self.decay
        for i in range(min(verified, accepted + 1)):  # positions 1..accepted+1 were reached
            trials[i] += 1.0
            hits[i] += 1.0 if i < accepted else 0.0

    def rest(self, seq: str) -> None:
        """A step in which ``seq`` verified no draft: its counts decay all the same, so its estimate
        drifts back towards the population's. Without it a sequence estimated low was held at k = 0,
        and with nothing observed its estimate, and so its k, never moved again."""
        for counts in (self.hits.get(seq), self.trials.get(seq)):
            for i in range(len(counts or ())):
                counts[i] *= self.decay

    def forget(self, seq: str) -> None:
        self.hits.pop(seq, None)
        self.trials.pop(seq, None)

    def chain_taus(self, seqs: list[str], alpha: list[float], k_max: int) -> list[float]:
        """``[tau(k = 0), tau(k = 1), ..., tau(k = k_max)]``, averaged over ``seqs``."""
        total = [0.0] * (k_max + 1)
        w = self.prior_weight
        prior = [alpha[i] if i < len(alpha) else (alpha[-1] if alpha else 0.0) for i in range(k_max)]
        for seq in seqs:
            hits, trials = self.hits.get(seq, ()), self.trials.get(seq, ())
            tau, run = 1.0, 1.0
            total[0] += 1.0
            for i in range(k_max):
                a = prior[i]
                if i < len(hits):
                    a = (hits[i] + w * a) / (trials[i] + w)
                run *= a
                tau += run
                total[i + 1] += tau
        n = max(len(seqs), 1)
        return [t / n for t in total]


@dataclass
class SpeculationPolicy:
    cost: StepCost
    acceptance: AcceptanceTracker
    candidates: list[Shape]
    start: StartCost | None = None  # None: steps are priced as pure decode steps

    # batch -> step_time(batch, candidates[i]) for every i, frozen by freeze_costs() and filled as
    # batch sizes are asked for (a fast path for a server that chooses every step); None: ask the
    # cost model each time
    _times: dict[int, list[float]] | None = field(default=None, repr=False)
    _max_frozen: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.candidates = sorted(set(self.candidates) | {NONE})

    def freeze_costs(self, max_batch: int) -> None:
        """Tabulate the step times of every candidate up to ``max_batch``; :meth:`choose` reads the table
        until the next call (the cost model's online updates are picked up by calling it again). Rows
        are tabulated when first asked for, so a refresh costs only the batch sizes in use."""
        self._times, self._max_frozen = {}, max_batch

    def _row(self, batch: int) -> list[float]:
        """Step times of every candidate at ``batch``."""
        if self._times is not None and batch <= self._max_frozen:
            row = self._times.get(batch)
            if row is None:
                row = self._times[batch] = [self.cost.step_time(batch, s) for s in self.candidates]
            return row
        return [self.cost.step_time(batch, s) for s in self.candidates]

    def _start_per_token(self) -> list[float]:
        """Seconds each output token carries for its request's start, per candidate."""
        if self.start is None:
            return [0.0] * len(self.candidates)
        return [self.start.per_token(s) for s in self.candidates]

    @staticmethod
    def _rate(batch: int, tau: float, step: float, start: float) -> float:
        """Tokens per second per sequence: ``tau`` tokens a step, each carrying ``start`` seconds of
        its request's start (``B * tau * start`` per step)."""
        return tau / (step + batch * tau * start)

    def goodput(self, batch: int, shape: Shape) -> float:
        """Expected tokens per second for the whole batch."""
        return batch * self.rate(batch, shape, self.acceptance.tau(shape))

    def _taus(self, tau: dict[Shape, float] | None) -> list[float]:
        return [tau[s] if tau and s in tau else self.acceptance.tau(s) for s in self.candidates]

    def rate(self, batch: int, shape: Shape, tau: float) -> float:
        """Tokens per second per sequence of ``shape`` at ``batch`` if it emits ``tau`` tokens a step."""
        start = self.start.per_token(shape) if self.start is not None else 0.0
        return self._rate(batch, tau, self.cost.step_time(batch, shape), start)

    def _best_index(self, batch: int, taus: list[float], upto: int, start: list[float]) -> int:
        """The candidate (among the first ``upto + 1``) with the highest tokens per second; ``start``:
        :meth:`_start_per_token`."""
        row = self._row(batch)
        best, best_rate = 0, self._rate(batch, taus[0], row[0], start[0])
        for i in range(1, upto + 1):
            rate = self._rate(batch, taus[i], row[i], start[i])
            if rate > best_rate:  # ties go to less speculation (earlier in the order)
                best, best_rate = i, rate
        return best

    def choose(self, batch: int, tau: dict[Shape, float] | None = None) -> Shape:
        """The goodput-maximising shape among those no more speculative than the choice at ``batch - 1``
        (and so at every smaller batch): going up from batch 1, each batch size picks the best shape
        still allowed, which caps every larger one.

        ``tau`` (expected tokens per sequence per step, by shape) overrides the tracker's estimate, e.g.
        with the acceptance of the sequences actually in the batch (:class:`RequestAcceptance`)."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        taus, start = self._taus(tau), self._start_per_token()
        cap = len(taus) - 1
        for b in range(1, batch + 1):  # the best at b among the shapes still allowed
            cap = self._best_index(b, taus, cap, start)
            if cap == 0:
                break
        return self.candidates[cap]

    def near_best_below(
        self, batch: int, shape: Shape, margin: float, tau: dict[Shape, float] | None = None
    ) -> bool:
        """Whether, at every batch size below ``batch`` whose best shape is less speculative than
        ``shape``, ``shape``'s predicted goodput is within ``margin`` of that best: keeping it at
        ``batch`` then stays consistent with the monotone cap up to the margin (hysteresis must not
        keep more speculation than smaller batches clearly refuse)."""
        taus, start = self._taus(tau), self._start_per_token()
        i = self.candidates.index(shape)
        for b in range(1, batch):
            row = self._row(b)
            rates = [self._rate(b, t, s, c) for t, s, c in zip(taus, row, start)]
            j = max(range(len(rates)), key=rates.__getitem__)
            if j < i and rates[i] * (1 + margin) < rates[j]:
                return False
        return True

    def observe_start(self, shape: Shape, batch: int, started: int, seconds: float) -> None:
        """A timed step of ``batch`` sequences that started ``started`` of them (the others decoding
        with ``shape``): what it took beyond a decode step of ``batch`` teaches the start cost."""
        if self.start is not None and started > 0:
            self.start.observe_start(shape, started, seconds - self.cost.step_time(batch, shape))

    def observe_finished(self, tokens: int) -> None:
        """A request finished after emitting ``tokens`` tokens."""
        if self.start is not None:
            self.start.observe_request(tokens)

    def table(self, batch_sizes: list[int]) -> dict[int, Shape]:
        return {b: self.choose(b) for b in batch_sizes}

    def observe(
        self,
        shape: Shape,
        batch: int,
        emitted_per_sequence: float,
        seconds: float | None = None,
        accepted: list[int] | None = None,
    ) -> None:
        """Step feedback (matches ``SpeculativeEngine.generate(on_step=...)``); ``seconds``, the step's
        measured time, reaches the cost model when it learns online (:class:`OnlineStepCost`);
        ``accepted``, each sequence's accepted draft tokens, the per-position acceptance."""
        self.acceptance.observe(shape, emitted_per_sequence, accepted)
        if seconds is not None and isinstance(self.cost, OnlineStepCost):
            self.cost.observe(batch, shape, seconds)

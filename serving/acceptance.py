"""Acceptance: how many tokens a draft shape is expected to emit per step, learnt online.

Contract
--------
* :func:`chain_tau` turns conditional acceptance per chain position (alpha_1, alpha_2, ...) into tau,
  the mean tokens a chain of k drafts emits per step, bonus token included.
* :class:`AcceptanceTracker` keeps, per shape, an EMA of the tokens emitted per sequence per step
  (tau, bonus included), seeded from an offline estimate (the trained head's alpha_k for chains);
  or, given each sequence's accepted count, an EMA of the acceptance at each chain position.
* :class:`RequestAcceptance` keeps the same per position for each request in flight, so a server
  can price the requests actually in its batch.

Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.shape import TreeShape


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


def _is_chain(shape: TreeShape) -> bool:
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

    seed: dict[TreeShape, float]
    beta: float = 0.05  # weight of a new observation
    ema: dict[TreeShape, float] = field(default_factory=dict)
    alpha: list[float] = field(default_factory=list)  # live conditional acceptance per chain position
    per_position: bool = False
    reference_batch: int = 1  # per-position learning: a step of this many sequences weighs ``beta``

    @classmethod
    def from_alpha(
        cls,
        alpha: list[float],
        shapes: list[TreeShape],
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

    def tau(self, shape: TreeShape) -> float:
        if shape.is_none:
            return 1.0
        if self.per_position and self.alpha and _is_chain(shape):
            return chain_tau(self.alpha, shape.num_draft_tokens)
        return self.ema.get(shape, self.seed.get(shape, 1.0))

    def observe(
        self, shape: TreeShape, emitted_per_sequence: float, accepted: list[int] | None = None
    ) -> None:
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

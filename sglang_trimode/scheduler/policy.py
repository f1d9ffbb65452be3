"""Per-step mode and draft-length choice for every running request (plain Python, no sglang).

A :class:`Choice` is a mode and its block ``L``. Per forward it costs ``tokens`` query tokens and
yields ``expected_tokens`` in expectation, from the request's per-draft acceptance ``alpha``:
``1 + sum_{i=1}^{L-1} alpha^i`` for a verify step (drafts are accepted as a prefix, the bonus
token always comes), halved for linear self-speculation (draft + verify = two forwards).

``AutoPolicy`` maximises the batch's expected tokens per second under a :class:`CostModel`:
it starts from the best uniform choice (so it is never worse than any fixed lossless mode it can
choose) and then improves request by request (coordinate ascent), within the token budget.
Requests the budget cannot hold this step wait, oldest first, so none starves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sglang_trimode.scheduler.cost import CostModel

LOSSLESS_MODES = ("ar", "self_spec_linear", "self_spec_quadratic")


@dataclass(frozen=True)
class Choice:
    mode: str
    block: int = 1

    @property
    def tokens(self) -> int:
        """Query tokens this request puts into one forward."""
        if self.mode == "self_spec_quadratic":
            return self.block * (self.block + 1)
        return 1 if self.mode == "ar" else self.block

    def expected_tokens(self, alpha: float) -> float:
        """Expected tokens emitted per forward at per-draft acceptance ``alpha``."""
        if self.mode == "ar" or self.block == 1:
            return 1.0
        step = 1.0 + sum(alpha**i for i in range(1, self.block))
        return step / 2 if self.mode == "self_spec_linear" else step


AR = Choice("ar", 1)


@dataclass
class RequestView:
    """What the scheduler knows of a running request."""

    rid: int
    context: int
    accepted: int = 0  # drafts accepted so far
    rejections: int = 0  # verify steps that rejected a draft
    waited: int = 0  # steps skipped for budget
    prior: tuple[float, float] = (1.0, 1.0)  # Beta prior on alpha

    @property
    def alpha(self) -> float:
        """Posterior mean of the per-draft acceptance (truncated-geometric MLE + prior)."""
        a, b = self.prior
        return (self.accepted + a) / (self.accepted + self.rejections + a + b)

    def observe(self, drafts: int, accepted: int) -> None:
        """Record one verify step that offered ``drafts`` drafts and accepted ``accepted``."""
        self.accepted += accepted
        self.rejections += int(accepted < drafts)


@dataclass
class AutoPolicy:
    cost: CostModel
    max_tokens_per_forward: int = 8192
    candidates: Sequence[Choice] = field(
        default_factory=lambda: [AR]
        + [Choice("self_spec_quadratic", b) for b in (2, 3, 4, 6, 8, 12, 16)]
        + [Choice("self_spec_linear", b) for b in (4, 8, 16, 32)]
    )
    passes: int = 2

    def objective(self, reqs: Sequence[RequestView], choices: Sequence[Choice]) -> float:
        tokens = sum(c.tokens for c in choices)
        if tokens > self.max_tokens_per_forward:
            return float("-inf")
        gain = sum(c.expected_tokens(r.alpha) for r, c in zip(reqs, choices))
        return gain / self.cost.time(tokens, sum(r.context for r in reqs))

    def choose(self, reqs: Sequence[RequestView]) -> list[Choice]:
        if not reqs:
            return []
        best = max(self.candidates, key=lambda c: self.objective(reqs, [c] * len(reqs)))
        choices = [best] * len(reqs)
        score = self.objective(reqs, choices)
        for _ in range(self.passes):
            improved = False
            for i in sorted(range(len(reqs)), key=lambda i: -reqs[i].alpha):
                for cand in self.candidates:
                    trial = choices[:i] + [cand] + choices[i + 1 :]
                    s = self.objective(reqs, trial)
                    if s > score * (1 + 1e-9):
                        choices, score, improved = trial, s, True
            if not improved:
                break
        return choices


@dataclass
class FixedPolicy:
    choice: Choice

    def choose(self, reqs: Sequence[RequestView]) -> list[Choice]:
        return [self.choice] * len(reqs)


def admit(reqs: Sequence[RequestView], max_tokens: int, min_tokens: int = 1) -> list[RequestView]:
    """The requests that run this step: all of them if the budget allows at least ``min_tokens``
    each, else the longest-waiting first. Skipped requests' wait counters grow, so none starves."""
    cap = max(1, max_tokens // max(1, min_tokens))
    order = sorted(reqs, key=lambda r: (-r.waited, r.rid))
    running, waiting = order[:cap], order[cap:]
    for r in running:
        r.waited = 0
    for r in waiting:
        r.waited += 1
    return sorted(running, key=lambda r: r.rid)

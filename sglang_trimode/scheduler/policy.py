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

from sglang_trimode import masks
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

    def descriptor(self, verify: bool = False) -> masks.MaskDescriptor:
        """The mask of this choice's full-length segment (``verify``: a linear verify step)."""
        if self.mode == "ar":
            return masks.decode()
        if self.mode == "self_spec_quadratic":
            return masks.quadratic(self.block - 1, self.block)
        if self.mode == "self_spec_linear" and verify:
            return masks.linear_verify(self.block)
        return masks.diffusion_draft(self.block)

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
    running: bool = False  # holds a running slot (KV, a batch row) until it finishes
    fixed: Choice | None = None  # a request with a fixed mode: the policy never changes it
    locked: Choice | None = None  # mid-cycle (e.g. linear verify after its draft): must go on

    @property
    def alpha(self) -> float:
        """Posterior mean of the per-draft acceptance (truncated-geometric MLE + prior)."""
        a, b = self.prior
        return (self.accepted + a) / (self.accepted + self.rejections + a + b)

    def observe(self, drafts: int, accepted: int) -> None:
        """Record one verify step that offered ``drafts`` drafts and accepted ``accepted``."""
        self.accepted += accepted
        self.rejections += int(accepted < drafts)


def default_candidates(
    max_tokens: int | None = None, modes: Sequence[str] = LOSSLESS_MODES
) -> list[Choice]:
    """The choices :class:`AutoPolicy` weighs: AR (always), quadratic self-speculation with
    blocks 2..16 and linear with 4..32; only ``modes``, and only those putting at most
    ``max_tokens`` query tokens into a forward (a server's KV reservation per request)."""
    every = [AR] + [Choice("self_spec_quadratic", b) for b in (2, 3, 4, 6, 8, 12, 16)]
    every += [Choice("self_spec_linear", b) for b in (4, 8, 16, 32)]
    return [
        c
        for c in every
        if c == AR or (c.mode in modes and (max_tokens is None or c.tokens <= max_tokens))
    ]


@dataclass
class AutoPolicy:
    cost: CostModel
    max_tokens_per_forward: int = 8192
    candidates: Sequence[Choice] = field(default_factory=default_candidates)
    passes: int = 2

    def objective(
        self,
        reqs: Sequence[RequestView],
        choices: Sequence[Choice],
        budget: int | None = None,
        base: tuple[float, int, int] = (0.0, 0, 0),
    ) -> float:
        """Expected tokens per second of one forward; ``base``: (expected tokens, tokens,
        context) of the forward's other rows (prefill chunks, fixed or locked requests)."""
        budget = self.max_tokens_per_forward if budget is None else budget
        tokens = sum(c.tokens for c in choices)
        if tokens > budget:
            return float("-inf")
        gain = base[0] + sum(c.expected_tokens(r.alpha) for r, c in zip(reqs, choices))
        return gain / self.cost.time(base[1] + tokens, base[2] + sum(r.context for r in reqs))

    def choose(
        self,
        reqs: Sequence[RequestView],
        budget: int | None = None,
        base: tuple[float, int, int] = (0.0, 0, 0),
    ) -> list[Choice]:
        """One choice per request, together within ``budget`` query tokens (AR for all when the
        budget holds nothing more)."""
        if not reqs:
            return []
        budget = min(
            self.max_tokens_per_forward if budget is None else budget, self.max_tokens_per_forward
        )
        context = base[2] + sum(r.context for r in reqs)
        alphas = [r.alpha for r in reqs]

        def rate(gain: float, tokens: int) -> float:  # the objective from running totals
            if tokens - base[1] > budget:
                return float("-inf")
            return gain / self.cost.time(tokens, context)

        def uniform(c: Choice) -> float:
            gain = base[0] + sum(c.expected_tokens(a) for a in alphas)
            return rate(gain, base[1] + c.tokens * len(reqs))

        best = max(self.candidates, key=lambda c: (uniform(c), c == AR))
        if uniform(best) == float("-inf"):
            best = AR
        choices = [best] * len(reqs)
        gain = base[0] + sum(best.expected_tokens(a) for a in alphas)
        tokens = base[1] + best.tokens * len(reqs)
        current = rate(gain, tokens)
        for _ in range(self.passes):
            improved = False
            for i in sorted(range(len(reqs)), key=lambda i: -alphas[i]):
                old = choices[i]
                for cand in self.candidates:
                    g = gain + cand.expected_tokens(alphas[i]) - old.expected_tokens(alphas[i])
                    t = tokens + cand.tokens - old.tokens
                    s = rate(g, t)
                    if s > current * (1 + 1e-9):
                        choices[i], gain, tokens, current, old, improved = cand, g, t, s, cand, True
            if not improved:
                break
        return choices


def fit_budget(choices: Sequence[Choice], budget: int | None) -> list[Choice]:
    """Shrink the largest choices to AR until the total fits ``budget`` (>= one token each)."""
    out = list(choices)
    if budget is None:
        return out
    if budget < len(out):
        raise ValueError(f"budget {budget} < {len(out)} requests: admit fewer requests first")
    total = sum(c.tokens for c in out)
    for i in sorted(range(len(out)), key=lambda i: -out[i].tokens):
        if total <= budget:
            break
        total -= out[i].tokens - 1
        out[i] = AR
    return out

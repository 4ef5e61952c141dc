"""The audit's verdict: from the two worlds' scores to an epsilon lower bound, and its report.

A threshold test on the scores has false-positive and false-negative rates that any
(epsilon, delta)-DP mechanism must keep apart by at most e^epsilon; Clopper-Pearson upper bounds on
both rates, measured on scores the threshold was not chosen on, turn the observed separation into an
epsilon lower bound that holds with the chosen confidence (``owner_node.audit`` plays the game).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import beta


@dataclass
class AuditResult:
    claimed_epsilon: float  # PRV accountant for exactly the audited release
    epsilon_lower_bound: float  # holds with probability >= confidence if the mechanism is as claimed
    threshold: float
    false_positive_rate: float
    false_negative_rate: float
    false_positive_upper: float
    false_negative_upper: float
    evaluation_trials: int  # per world, held out from the threshold choice
    canary: str
    config: dict
    scores_without: list[float]
    scores_with: list[float]

    @property
    def consistent(self) -> bool:
        return self.epsilon_lower_bound <= self.claimed_epsilon

    def to_dict(self) -> dict:
        return asdict(self) | {"consistent": self.consistent}


def clopper_pearson_upper(errors: int, n: int, alpha: float) -> float:
    """One-sided upper confidence bound at level 1 - alpha on a binomial rate."""
    return 1.0 if errors >= n else float(beta.ppf(1 - alpha, errors + 1, n - errors))


def epsilon_from_rates(fpr: float, fnr: float, delta: float) -> float:
    """Largest epsilon that rates (fpr, fnr) prove: (eps, delta)-DP forces fpr + e^eps fnr >= 1 - delta."""
    candidates = [0.0]
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if a > 0 and 1 - delta - b > 0:
            candidates.append(math.log((1 - delta - b) / a))
    return max(candidates)


def lower_bound(
    without: np.ndarray, with_: np.ndarray, delta: float, confidence: float, gen: np.random.Generator
) -> tuple[float, float, tuple[float, float, float, float], int]:
    """Choose the threshold on one half of each world's scores; bound epsilon on the other half."""
    perm0, perm1 = gen.permutation(len(without)), gen.permutation(len(with_))
    h0, h1 = len(without) // 2, len(with_) // 2
    pick0, eval0 = without[perm0[:h0]], without[perm0[h0:]]
    pick1, eval1 = with_[perm1[:h1]], with_[perm1[h1:]]
    alpha = (1 - confidence) / 2  # two rates bounded at once (Bonferroni)

    def bound(t: float, s0: np.ndarray, s1: np.ndarray) -> tuple[float, tuple[float, float, float, float]]:
        fp, fn = int((s0 > t).sum()), int((s1 <= t).sum())
        fpr_u, fnr_u = clopper_pearson_upper(fp, len(s0), alpha), clopper_pearson_upper(fn, len(s1), alpha)
        return epsilon_from_rates(fpr_u, fnr_u, delta), (fp / len(s0), fn / len(s1), fpr_u, fnr_u)

    pooled = np.unique(np.concatenate([pick0, pick1]))
    candidates = np.concatenate([[pooled[0] - 1.0], (pooled[1:] + pooled[:-1]) / 2])  # between observed scores
    best = max(candidates, key=lambda t: bound(t, pick0, pick1)[0])
    eps, rates = bound(float(best), eval0, eval1)
    return eps, float(best), rates, len(eval0)


def format_audit(result: AuditResult) -> str:
    verdict = "consistent with the claim" if result.consistent else "EXCEEDS THE CLAIM: the mechanism leaks"
    return "\n".join(
        [
            "PRIVACY AUDIT (canary distinguishing game)",
            f"signal:                  {result.config['signal']}",
            f"canary:                  {result.canary}",
            f"trials per world:        {len(result.scores_without)} ({result.evaluation_trials} held out for bounds)",
            f"false positive rate:     {result.false_positive_rate:.4f} (upper {result.false_positive_upper:.4f})",
            f"false negative rate:     {result.false_negative_rate:.4f} (upper {result.false_negative_upper:.4f})",
            f"claimed epsilon (PRV):   {result.claimed_epsilon:.4f} at delta {result.config['delta']:g}",
            f"audited lower bound:     {result.epsilon_lower_bound:.4f} (confidence {result.config['confidence']:.0%})",
            f"verdict:                 {verdict}",
        ]
    )


def write_audit(result: AuditResult, out: Path) -> None:
    """``audit.json`` for machines and ``audit.png`` (score histograms of both worlds) for people."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result.to_dict(), indent=2))
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(result.scores_without + result.scores_with, bins=40)
    ax.hist(result.scores_without, bins=bins, alpha=0.6, label="without canary")
    ax.hist(result.scores_with, bins=bins, alpha=0.6, label="with canary")
    ax.axvline(result.threshold, color="k", linestyle="--", label="threshold")
    ax.set_xlabel("score: <noisy class sum, canary statistic>")
    ax.set_ylabel("releases")
    ax.set_title(f"claimed epsilon {result.claimed_epsilon:.3f}, audited lower bound {result.epsilon_lower_bound:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "audit.png", dpi=120)
    plt.close(fig)

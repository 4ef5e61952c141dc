"""Expected signal-to-noise of a run's releases, from public facts only (counts, q, sigma, k, draws).

The one home of the formula and of the threshold below which a run is expected to learn little;
the distiller's warning before any reservation, its ``--dry-run`` plan and the owner's load summary
all use it.

Model: a draw's class-c release is S_c + N, where S_c sums the m_c sampled records' statistics, each
clipped to norm at most C, and N is Gaussian noise of std sigma*C in each of the d released
coordinates. Taking every record at full norm C and all pointing one way (an upper bound: the
calibration of ``LOW_SNR`` absorbs how far real records fall short), ||S_c|| = m_c C against
||N|| ~ sigma C sqrt(d). The optimisation matches every one of the D draws, whose noise is
independent, so their evidence adds in squares:

    SNR_c = m_c * sqrt(D) / (sigma * sqrt(d)),   m_c = q * n_c  (expected records of class c a draw)

C cancels. Several owners answering the same seeds add their records (m_c = sum_o q_o n_c,o) and
their noise variances (sigma^2 = sum_o sigma_o^2). In patient mode the records are patients,
whose number the distiller is not told: with image counts in n_c the figure is an upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Below this a class is expected to be learnt little: calibrated on measured runs (README, "Will a
# run learn anything?"). In a 10:1 imbalanced digits run the five classes at 1.5 and above were
# recalled at 80-98% and the five at 1.1 and below at 0-10%; a balanced run with every class near
# 1 lost 29 points of accuracy to one near 4.
LOW_SNR = 1.5


def class_snr(
    expected_records: Sequence[Sequence[float]], noise_multipliers: Sequence[float], releases: int, dim: int
) -> list[float]:
    """Each class's expected SNR. ``expected_records[o][c]``: owner o's expected records of class c in
    one draw (q_o * n_c,o); ``noise_multipliers[o]``: owner o's sigma; ``dim``: released coordinates."""
    if len(expected_records) != len(noise_multipliers) or not expected_records:
        raise ValueError("give each owner's expected records and its noise multiplier")
    if releases < 1 or dim < 1:
        raise ValueError(f"releases and dim must be >= 1, got {releases} and {dim}")
    noise = math.sqrt(sum(s * s for s in noise_multipliers)) * math.sqrt(dim)
    classes = len(expected_records[0])
    signal = [sum(records[c] for records in expected_records) for c in range(classes)]
    if noise == 0:
        return [math.inf] * classes
    return [m * math.sqrt(releases) / noise for m in signal]


def low_classes(snr: Sequence[float], names: Sequence[str], threshold: float = LOW_SNR) -> list[str]:
    """The classes whose releases are expected to carry too little signal to learn from."""
    return [name for name, s in zip(names, snr, strict=True) if s < threshold]


def records_per_draw_bound(records: Sequence[int], max_sample_rate: float) -> list[float]:
    """Expected records of each class in one draw at the highest rate an owner allows: no plan gets more."""
    return [max_sample_rate * n for n in records]

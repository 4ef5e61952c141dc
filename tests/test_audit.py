"""The empirical audit: below the claim for the real mechanism, above it when the noise is too small."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from owner_node.audit import AuditConfig, CanaryGame, KipStepCanaryGame
from owner_node.audit_verdict import clopper_pearson_upper, epsilon_from_rates, lower_bound, write_audit
from owner_node.data import PrivateData
from owner_node.kip_mechanism import KipStepMechanism
from owner_node.mechanism import FeatureMechanism
from shared.compute.networks import NetworkSpec
from shared.datasets import to_float
from tests.conftest import random_image_set

NORM = (0.5, 0.5)
# sigma 3, one draw at q = 1: claimed epsilon 1.28 at delta 1e-5.
CONFIG = AuditConfig(trials=60, noise_multiplier=3.0, network=NetworkSpec(width=8, depth=2), subspace_dim=6)


class UnderNoisedMechanism(FeatureMechanism):
    """Test-only: the real mechanism with 1% of the noise the accountant assumes (a broken owner)."""

    def noise_std(self, request) -> float:
        return super().noise_std(request) * 0.01


class UnderNoisedKipSteps(KipStepMechanism):
    """Test-only: synchronised KIP steps with 1% of the noise the accountant assumes."""

    def noise_std(self, request) -> float:
        return super().noise_std(request) * 0.01


def game(mechanism_class: type[FeatureMechanism] = FeatureMechanism, signal: str = "features") -> CanaryGame:
    data = PrivateData.from_image_set(random_image_set(40, seed=1), NORM)
    aux = random_image_set(20, seed=2)
    config = replace(CONFIG, signal=signal)
    images = to_float(aux.images, NORM)
    return CanaryGame(data, images, 1.0, config, mechanism_class=mechanism_class, aux_labels=aux.labels)


def test_clopper_pearson_and_rates_to_epsilon() -> None:
    # No errors in 100 trials: the 97.5% upper bound is 1 - 0.025^(1/100).
    assert clopper_pearson_upper(0, 100, 0.025) == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-6)
    assert clopper_pearson_upper(100, 100, 0.025) == 1.0
    assert epsilon_from_rates(0.1, 0.5, 0.0) == pytest.approx(math.log(5.0))
    assert epsilon_from_rates(0.5, 0.5, 0.0) == 0.0  # a coin flip proves nothing


def test_identical_worlds_give_no_evidence() -> None:
    gen = np.random.default_rng(0)
    scores = gen.normal(size=2000)
    eps, *_ = lower_bound(scores[:1000], scores[1000:], 1e-5, 0.95, np.random.default_rng(1))
    assert eps < 0.3


def test_real_mechanism_stays_below_its_claim(tmp_path: Path) -> None:
    result = game().play(show_progress=False)
    assert result.claimed_epsilon == pytest.approx(1.28, abs=0.02)
    assert result.consistent and result.epsilon_lower_bound < result.claimed_epsilon
    write_audit(result, tmp_path)
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["consistent"] and len(saved["scores_with"]) == CONFIG.trials
    assert (tmp_path / "audit.png").stat().st_size > 5000


def test_audit_catches_a_mechanism_whose_noise_is_far_too_small() -> None:
    result = game(UnderNoisedMechanism).play(show_progress=False)
    assert not result.consistent, (result.epsilon_lower_bound, result.claimed_epsilon)
    assert result.epsilon_lower_bound > result.claimed_epsilon + 0.5


def test_the_game_is_decided_by_the_canary_not_the_seeds() -> None:
    g = game()
    # Same public seeds in both worlds; only the canary differs between the two mechanisms' data.
    assert g.with_.data.class_counts[0] == g.without.data.class_counts[0] + 1
    assert g.with_.data.class_counts[1:] == g.without.data.class_counts[1:]
    assert all(abs(float(d.norm()) - 1.0) < 1e-6 for d in g.directions)  # clipped at C = 1


@pytest.mark.parametrize("signal", ["gradients", "kip"])
def test_other_signal_kinds_stay_below_the_claim_and_a_broken_one_does_not(signal: str) -> None:
    # The same game on the other statistics the primitive releases: per-example loss gradients
    # (projected onto the auxiliary gradients' subspace) and decoupled-KIP packed moments.
    honest = game(signal=signal)
    assert honest.request.signal == signal
    assert all(0 < float(d.norm()) <= 1.0 + 1e-9 for d in honest.directions)  # clipped at C = 1
    result = honest.play(show_progress=False)
    assert result.consistent, (result.epsilon_lower_bound, result.claimed_epsilon)
    broken = game(UnderNoisedMechanism, signal=signal).play(show_progress=False)
    assert broken.epsilon_lower_bound > broken.claimed_epsilon + 0.5, broken.epsilon_lower_bound


def test_auditing_gradients_needs_the_auxiliary_labels() -> None:
    data = PrivateData.from_image_set(random_image_set(20, seed=1), NORM)
    aux = to_float(random_image_set(20, seed=2).images, NORM)
    with pytest.raises(ValueError, match="labels"):
        CanaryGame(data, aux, 1.0, replace(CONFIG, signal="gradients"))
    with pytest.raises(ValueError, match="projection"):
        replace(CONFIG, signal="kip", subspace_dim=0)


def kip_step_game(mechanism_class: type[KipStepMechanism] = KipStepMechanism) -> KipStepCanaryGame:
    # The other records add the same clipped sum in every trial at q = 1; a few per class suffice.
    data = PrivateData.from_image_set(random_image_set(12, seed=1), NORM)
    return KipStepCanaryGame(data, 1.0, replace(CONFIG, signal="kip-sync"), mechanism_class=mechanism_class)


def test_synchronised_kip_messages_stay_below_the_claim_and_a_broken_one_does_not() -> None:
    # One step per message, Adam from zero moments: the reply's m is 0.1 x the noisy clipped sum.
    honest = kip_step_game()
    assert honest.request.num_steps == 1 and not honest.request.adam_m.any()
    assert 0 < float(honest.direction.norm()) <= 1.0 + 1e-9  # the canary's gradient, clipped at C = 1
    assert honest.with_.data.class_counts[0] == honest.without.data.class_counts[0] + 1
    result = honest.play(show_progress=False)
    assert result.claimed_epsilon == pytest.approx(1.28, abs=0.02)
    assert result.consistent, (result.epsilon_lower_bound, result.claimed_epsilon)
    broken = kip_step_game(UnderNoisedKipSteps).play(show_progress=False)
    assert broken.epsilon_lower_bound > broken.claimed_epsilon + 0.5, broken.epsilon_lower_bound


def test_a_kip_sync_audit_plays_one_step_and_only_in_its_own_game() -> None:
    with pytest.raises(ValueError, match="one step"):
        replace(CONFIG, signal="kip-sync", draws=2)
    data = PrivateData.from_image_set(random_image_set(20, seed=1), NORM)
    aux = random_image_set(20, seed=2)
    with pytest.raises(ValueError, match="KipStepCanaryGame"):
        CanaryGame(data, to_float(aux.images, NORM), 1.0, replace(CONFIG, signal="kip-sync"), aux_labels=aux.labels)
    with pytest.raises(ValueError, match="kip-sync"):
        KipStepCanaryGame(data, 1.0, CONFIG)
    with pytest.raises(ValueError, match="cannot audit"):
        replace(CONFIG, signal="pixels")

"""Synchronised DP-KIP-ScatterNet at the owner: K noised Adam steps on the distiller's synthetic set.

Per step (one release): Poisson-sample every class with the owner's secret sampling stream,
compute the scattering features of the sample, the exact per-example gradient of the KRR loss with
respect to the synthetic images (``shared.compute.kip``), clip each to C, sum, and add noise of std
sigma * C drawn once per step from a second stream; both streams are ChaCha20 keyed with 256 bits
of OS entropy per request (``owner_node.randomness``). The Adam update
that follows uses only the noisy sum and the request, so the returned images and moments are
post-processing of the K releases. Nothing private seeds the set: it arrives from the distiller.
"""

from __future__ import annotations

import numpy as np
import torch

from owner_node.data import PrivateData
from owner_node.randomness import SecureRandom, check_sampler, noisy
from shared.compute.kip import centred_one_hot, clipped_gradient_sum
from shared.compute.scattering import scattering_features
from shared.wire.messages import KipStepRequest

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
EXAMPLES_PER_PASS = 10  # per-example VJPs per backward pass; fastest of 1/5/10 measured (docs/dp-kip.md)


def adam_update(
    images: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, step: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (``step`` counts from 1), as torch.optim.Adam computes it, without global state."""
    b1, b2 = ADAM_BETAS
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    return images - lr * m_hat / (v_hat.sqrt() + ADAM_EPS), m, v


class KipStepMechanism:
    """Answers validated, reserved KIP step requests from the private data; knows nothing of budgets."""

    def __init__(self, data: PrivateData, clip_norm: float, noise_sampler: str = "csprng"):
        check_sampler(noise_sampler)
        self.noise_sampler = noise_sampler
        self.data = data
        self.clip_norm = clip_norm

    def noise_std(self, request: KipStepRequest) -> float:
        return request.noise_multiplier * self.clip_norm

    def run(self, request: KipStepRequest, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        num_classes = len(self.data.class_names)
        images = torch.from_numpy(np.array(request.images, dtype=np.float64))
        m = torch.from_numpy(np.array(request.adam_m, dtype=np.float64))
        v = torch.from_numpy(np.array(request.adam_v, dtype=np.float64))
        ipc = images.shape[0] // num_classes
        y_s = centred_one_hot(torch.arange(num_classes).repeat_interleave(ipc), num_classes)
        rates = self.data.sample_rates(request.expected_group_size)
        sample_stream, noise_stream = SecureRandom(), SecureRandom()  # fresh 256-bit OS keys, never kept
        for k in range(request.num_steps):
            index = self.data.poisson_sample(rates, sample_stream)
            phi_t = scattering_features(self.data.float_images(index))
            y_t = centred_one_hot(self.data.labels[index], num_classes)
            grad = clipped_gradient_sum(images.float(), y_s, phi_t, y_t, self.clip_norm, request.reg, EXAMPLES_PER_PASS)
            # The step's noise is drawn here, once; nothing ever draws it again (retries read the ledger).
            noisy_grad = noisy(grad, self.noise_std(request), self.noise_sampler, noise_stream)
            images, m, v = adam_update(images, m, v, noisy_grad, request.step + k + 1, request.lr)
            if progress is not None:
                progress(1)
        return images.float().numpy(), m.float().numpy(), v.float().numpy()

"""Synchronised DP-KIP-ScatterNet at the distiller: send the set, get it back after K noised steps.

Every optimisation step is a release at the owner (``owner_node/kip_mechanism.py``), so the plan
fixes the number of steps T (``iterations``) and the noise for T compositions of the sampled
Gaussian mechanism before the first request; one request carries ``draws_per_request`` = K steps,
because a round trip costs seconds. Each reply (set, Adam moments, step count) is stored before the
next request goes out, and request ids are derived from the plan, so a crashed run resumes from
the last stored reply and a lost reply is answered again from the owner's ledger, not re-spent.
The loss curve is the KRR loss of the synthetic set on the *public* auxiliary images: the private
loss would be a release of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distiller_node.client import OwnerClient
from distiller_node.optimisation import SyntheticState
from distiller_node.sampling import SamplingPlan
from distiller_node.signal_store import atomic_write
from shared.compute.kip import DEFAULT_REG, centred_one_hot, krr_loss
from shared.compute.scattering import scattering_features
from shared.progress import progress_bar
from shared.wire.messages import KipStepReply, KipStepRequest
from shared.wire.protocol import read_message


def public_kip_loss(images: torch.Tensor, labels: torch.Tensor, aux: tuple[torch.Tensor, torch.Tensor]) -> float:
    """KRR loss per auxiliary image, synthetic set as support: a progress measure that costs no privacy."""
    num_classes = int(labels.max()) + 1
    aux_x, aux_y = aux
    with torch.no_grad():
        loss = krr_loss(
            scattering_features(images).double(),
            centred_one_hot(labels, num_classes),
            scattering_features(aux_x).double(),
            centred_one_hot(aux_y, num_classes),
        )
    return float(loss) / len(aux_y)


def step_request(
    plan: SamplingPlan,
    b: int,
    images: np.ndarray,
    adam_m: np.ndarray,
    adam_v: np.ndarray,
    step: int,
    lr: float,
    reg: float = DEFAULT_REG,
) -> KipStepRequest:
    """Request ``b`` of the plan: K steps from ``step`` (the first one is also the plan's template)."""
    total = len(plan.network_seeds)
    return KipStepRequest(
        request_id=f"{plan.run_id}-o0-k{b:05d}",
        images=images,
        adam_m=adam_m,
        adam_v=adam_v,
        step=step,
        num_steps=min(plan.draws_per_request, total - step),
        expected_group_size=plan.group_size,
        noise_multiplier=plan.owners[0].noise_multiplier,
        lr=lr,
        reg=reg,
    )


def first_request(plan: SamplingPlan, initial: torch.Tensor, lr: float, reg: float = DEFAULT_REG) -> KipStepRequest:
    images = initial.numpy().astype(np.float32)
    return step_request(plan, 0, images, np.zeros_like(images), np.zeros_like(images), 0, lr, reg)


def run_kip_sync(
    client: OwnerClient,
    plan: SamplingPlan,
    state: SyntheticState,
    lr: float,
    store: Path,
    aux: tuple[torch.Tensor, torch.Tensor],
    show_progress: bool = True,
    reg: float = DEFAULT_REG,
) -> SyntheticState:
    store.mkdir(parents=True, exist_ok=True)
    total = len(plan.network_seeds)  # one planned release per step
    k = plan.draws_per_request
    images = state.images.numpy().astype(np.float32)
    adam_m = np.zeros_like(images)
    adam_v = np.zeros_like(images)
    step = 0
    losses: list[float] = []
    bar = progress_bar(total=total, desc="KIP steps (owner releases)", unit="step", disable=not show_progress)
    for b in range(-(-total // k)):
        path = store / f"steps_{b:05d}.msg"
        if path.exists():
            reply = read_message(path)
            if not isinstance(reply, KipStepReply):
                raise ValueError(f"{path} does not hold a KIP step reply")
        else:
            request = step_request(plan, b, images, adam_m, adam_v, step, lr, reg)
            reply, raw = client.kip_steps(request)
            atomic_write(path, raw)
        images, adam_m, adam_v, step = reply.images, reply.adam_m, reply.adam_v, reply.step
        losses.append(public_kip_loss(torch.from_numpy(images), state.labels, aux))
        bar.update(step - bar.n)
        bar.set_postfix(public_loss=f"{losses[-1]:.4f}")
    bar.close()
    final = torch.from_numpy(np.array(images))
    return SyntheticState(final, final.clone(), state.labels, step, losses)

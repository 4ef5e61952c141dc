"""A first look at decoupled DP-KIP on Fashion-MNIST, outside the two-party pipeline (issue 4 groundwork).

``prepare``: scattering features of the public auxiliary and held-out images, and the clean
(noise-free) clipped decoupled sums of the private training set, cached under ``--cache``. The
cache holds private-derived sums: a local experiment only, never something an owner would write.
``run``: add Gaussian noise for the given sigma once, optimise a synthetic set (Adam) against the
reconstructed loss, and report KRR accuracy on the held-out images (and optionally one ConvNet).

    OMP_NUM_THREADS=1 python -m deploy.kip_decoupled_probe prepare --cache runs/kip_probe
    OMP_NUM_THREADS=1 python -m deploy.kip_decoupled_probe run --cache runs/kip_probe --sigma 3.77
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from distiller_node.evaluation import EvaluationConfig, evaluate
from shared.datasets import FASHION_MNIST_NORMALIZATION, load_fashion_mnist, public_split, to_float
from shared.kip import (
    centred_one_hot,
    clipped_decoupled_sum,
    decoupled_dim,
    decoupled_krr_loss,
    krr_predict,
    psd_part,
    public_projection,
    synthetic_labels,
    unpack_decoupled,
)
from shared.scattering import scattering_features

CLASSES = 10


def prepare(cache: Path, k: int, clip_norm: float) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    aux, held_out = public_split(100, None)
    train = load_fashion_mnist(train=True)
    norm = FASHION_MNIST_NORMALIZATION
    phi_aux = scattering_features(to_float(aux.images, norm))
    phi_test = scattering_features(to_float(held_out.images, norm))
    projection = public_projection(phi_aux, k)
    total = torch.zeros(decoupled_dim(k, CLASSES), dtype=torch.float64)
    for i in range(0, len(train), 5000):
        z = projection.apply(scattering_features(to_float(train.images[i : i + 5000], norm)))
        total += clipped_decoupled_sum(z, train.labels[i : i + 5000], CLASSES, clip_norm)
    torch.save(
        {
            "phi_test": phi_test,
            "test_labels": held_out.labels,
            "test_images": to_float(held_out.images, norm),
            "phi_aux": phi_aux,
            "k": k,
            "clip_norm": clip_norm,
            "clean_sum": total,
            "counts": train.class_counts(),
        },
        cache / "prepared.pt",
    )
    return {"seconds": time.perf_counter() - start, "k": k, "clip_norm": clip_norm, "n": len(train)}


def run(cache: Path, sigma: float, ipc: int, steps: int, lr: float, reg: float, seed: int, convnet_epochs: int) -> dict:
    start = time.perf_counter()
    p = torch.load(cache / "prepared.pt")
    k, clip_norm = p["k"], p["clip_norm"]
    projection = public_projection(p["phi_aux"], k)
    noise = torch.randn(p["clean_sum"].shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    second, class_sums = unpack_decoupled(p["clean_sum"] + sigma * clip_norm * noise, k, CLASSES)
    second = psd_part(second)
    code = centred_one_hot(torch.arange(CLASSES), CLASSES)
    labels_s = synthetic_labels(ipc, CLASSES)
    y_s = centred_one_hot(labels_s, CLASSES)
    images = torch.randn(len(labels_s), 1, 28, 28, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    opt = torch.optim.Adam([images], lr=lr)
    losses = []
    for _ in range(steps):
        loss = decoupled_krr_loss(projection.apply(scattering_features(images)), y_s, second, class_sums, code, reg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    images = images.detach()
    y_test = p["test_labels"]
    phi_s = scattering_features(images)
    out = {
        "sigma": sigma,
        "ipc": ipc,
        "k": k,
        "steps": steps,
        "lr": lr,
        "reg": reg,
        "loss_first_last": [losses[0], losses[-1]],
        "krr_acc_projected": _acc(
            krr_predict(projection.apply(phi_s), y_s, projection.apply(p["phi_test"]), reg), y_test
        ),
        "krr_acc_full": _acc(krr_predict(phi_s.double(), y_s, p["phi_test"].double(), reg), y_test),
    }
    if convnet_epochs > 0:
        cfg = EvaluationConfig(runs=1, epochs=convnet_epochs)
        res = evaluate(images, labels_s, p["test_images"], y_test, CLASSES, cfg, show_progress=False)
        out["convnet_acc"] = res.mean
        out["convnet_epochs"] = convnet_epochs
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _acc(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.argmax(1) == labels).double().mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["prepare", "run"])
    ap.add_argument("--cache", type=Path, default=Path("runs/kip_probe"))
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--clip-norm", type=float, default=2.0)
    ap.add_argument("--sigma", type=float, default=0.0)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--reg", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--convnet-epochs", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.stage == "prepare":
        result = prepare(a.cache, a.k, a.clip_norm)
    else:
        result = run(a.cache, a.sigma, a.ipc, a.steps, a.lr, a.reg, a.seed, a.convnet_epochs)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

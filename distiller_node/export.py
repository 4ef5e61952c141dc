"""Artefacts a person or a training job picks up: synthetic set, PNGs, grid, loss curve."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from shared.datasets import from_float


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def export_synthetic(
    out: Path,
    stored: torch.Tensor,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    class_names: tuple[str, ...],
    normalization: tuple[float, float],
    meta: dict,
) -> dict[str, str]:
    """Write ``synthetic.pt`` (``torch.load`` gives a dict), per-class PNGs and a grid picture."""
    # Imported here, not at the top: ``dpdistill`` imports this module for every command, and an owner
    # image with a CPU-only torch has no working torchvision (its operators need the CUDA torch build).
    from torchvision.utils import make_grid, save_image

    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "images": train_images.detach().cpu(),  # normalised floats, ready to train on
            "labels": train_labels.cpu(),
            "stored_images": stored.detach().cpu(),  # before PEA decoding (same as images without PEA)
            "class_names": list(class_names),
            "normalization": list(normalization),
            "meta": meta,
        },
        out / "synthetic.pt",
    )
    pixels = from_float(train_images, normalization)
    png_dir = out / "synthetic_png"
    for c, name in enumerate(class_names):
        folder = png_dir / f"{c:02d}_{_safe(name)}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(pixels[train_labels == c]):
            save_image(img, folder / f"{i:03d}.png")
    per_class = int((train_labels == 0).sum())
    order = torch.argsort(train_labels, stable=True)
    grid = make_grid(pixels[order], nrow=per_class, padding=2, pad_value=1.0)
    save_image(grid, out / "synthetic_grid.png")
    return {"synthetic": "synthetic.pt", "png_folder": "synthetic_png", "grid": "synthetic_grid.png"}


def plot_loss(
    path: Path, losses: list[float], window: int = 50, ylabel: str = "squared distance to noisy class sums"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.tensor(losses, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t.numpy(), alpha=0.3, lw=0.8, label="per iteration")
    if len(losses) >= window:
        smooth = torch.nn.functional.avg_pool1d(t.view(1, 1, -1), window, stride=1).flatten()
        ax.plot(range(window - 1, len(losses)), smooth.numpy(), lw=1.5, label=f"moving mean ({window})")
    ax.set_xlabel("optimisation iteration")
    ax.set_ylabel(ylabel)
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_title("Distillation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Artefacts a person or a training job picks up: synthetic set, PNGs, grid, loss curve."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

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
    from torchvision.utils import save_image

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
    order = torch.argsort(train_labels, stable=True)
    labelled_grid(pixels[order], train_labels[order], class_names).save(out / "synthetic_grid.png")
    return {"synthetic": "synthetic.pt", "png_folder": "synthetic_png", "grid": "synthetic_grid.png"}


# Small images are enlarged (nearest neighbour) in the grid until a cell is at least this many pixels.
GRID_MIN_CELL = 56
GRID_PADDING = 2


def labelled_grid(pixels: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> Image.Image:
    """One row per class, its name at the left: ``pixels`` [N, C, H, W] in 0..1, sorted by ``labels``."""
    from torchvision.utils import make_grid  # see export_synthetic: not at the top

    per_class = max(int((labels == c).sum()) for c in range(len(class_names)))
    rows = []
    for c in range(len(class_names)):  # a class with fewer images is padded, so rows stay aligned
        own = pixels[labels == c]
        blank = torch.ones((per_class - len(own), *pixels.shape[1:]), dtype=pixels.dtype)
        rows.append(torch.cat([own, blank]))
    grid = make_grid(torch.cat(rows), nrow=per_class, padding=GRID_PADDING, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array).convert("RGB")
    side = pixels.shape[-1]
    scale = max(1, -(-GRID_MIN_CELL // side))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    cell = (side + GRID_PADDING) * scale
    font = ImageFont.load_default(size=max(10, min(18, cell // 3)))
    names = [str(n) for n in class_names]
    margin = max(int(font.getlength(n)) for n in names) + 12
    canvas = Image.new("RGB", (margin + picture.width, picture.height), "white")
    canvas.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        y = GRID_PADDING * scale + r * cell + side * scale // 2
        draw.text((margin - 6, y), name, fill="black", font=font, anchor="rm")
    return canvas


def smoothing_window(length: int) -> int:
    """Moving-mean window for a curve of ``length`` points: a tenth of the run (3 to 500); 0 (no mean)
    under 10 points, which are all drawn as they are."""
    return 0 if length < 10 else max(3, min(500, length // 10))


def plot_loss(path: Path, losses: list[float], ylabel: str = "squared distance to noisy class sums") -> None:
    """Every iteration's loss, and a moving mean whose window follows the run's length (drawn from the
    first iteration on: the mean of the points so far until the window fills), so a short run keeps it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.tensor(losses, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    window = smoothing_window(len(losses))
    short = len(losses) < 10
    ax.plot(t.numpy(), alpha=1.0 if short else 0.3, lw=0.8, marker="o" if short else None, label="per iteration")
    if window:
        total = torch.cat([torch.zeros(1, dtype=torch.float64), t.cumsum(0)])
        ends = torch.arange(1, len(losses) + 1)
        starts = (ends - window).clamp(min=0)
        smooth = (total[ends] - total[starts]) / (ends - starts)
        ax.plot(smooth.numpy(), lw=1.8, label=f"moving mean ({window} iterations)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("optimisation iteration")
    ax.set_ylabel(ylabel)
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_title("Distillation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

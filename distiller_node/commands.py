"""The distiller's own command: evaluate an exported synthetic set on a public test set."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.compute.choices import compute_options
from shared.evaluation_config import EvaluationConfig
from shared.images.policy import DEFAULT_RESIZE, RESIZE_POLICIES


def cmd_evaluate(a: argparse.Namespace) -> int:
    import torch

    from shared.compute.device import use_device
    from shared.datasets import split_auxiliary
    from shared.evaluation import evaluate
    from shared.images.classes import check_same_classes
    from shared.images.fashion_mnist import load_fashion_mnist
    from shared.images.source import load_source, source_for_path
    from shared.metrics import format_metrics

    blob = torch.load(a.synthetic, weights_only=True)
    images = blob["images"]
    if a.test is None:
        test = load_fashion_mnist(train=False, root=a.data_root, download=a.download)
        _, held_out = split_auxiliary(test, a.aux_per_class)
    else:  # the synthetic set's own size and channels unless told otherwise
        size, channels = a.image_size or images.shape[-1], a.channels or images.shape[1]
        held_out = load_source(source_for_path(a.test, size, channels, a.resize, "test"), cache=False).data
    if tuple(held_out.images.shape[1:]) != tuple(images.shape[1:]):
        raise ValueError(
            f"test images are {tuple(held_out.images.shape[1:])}, the synthetic ones {tuple(images.shape[1:])}: "
            "give --image-size and --channels matching the synthetic set"
        )
    check_same_classes(tuple(blob["class_names"]), held_out, names=("synthetic set", "test set"))
    cfg = EvaluationConfig(runs=a.eval_runs, epochs=a.eval_epochs, width=a.eval_width, precision=a.precision)
    device, compute = use_device(a.device, a.precision)
    print(f"evaluating on {compute}")
    result = evaluate(
        images,
        blob["labels"],
        held_out.images,
        held_out.labels,
        len(blob["class_names"]),
        cfg,
        normalization=tuple(blob["normalization"]),
        class_names=tuple(blob["class_names"]),
        device=device,
    )
    print(f"test accuracy: {100 * result.mean:.2f}% +- {100 * result.std:.2f} over {len(result.accuracies)} trainings")
    print(format_metrics(result.metrics))
    if a.json:
        from shared.measurement import cpu_model, write_json

        write_json(
            a.json,
            {
                "synthetic": str(Path(a.synthetic).resolve()),
                "test": a.test or "fashion-mnist",
                "test_images": len(held_out),
                "test_accuracy": result.to_dict(),
                "test_metrics": result.metrics,
                "evaluation": {"runs": cfg.runs, "epochs": cfg.epochs, "width": cfg.width},
                "compute": compute,
                "cpu": cpu_model(),
            },
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """evaluate"""
    e = sub.add_parser("evaluate", help="train ConvNets on an exported synthetic.pt and test them")
    e.add_argument("synthetic")
    e.add_argument("--test", help="a labelled test set (folder, CSV manifest or npz); default: Fashion-MNIST's")
    e.add_argument("--image-size", type=int, help="with --test: image side (default: the synthetic images')")
    e.add_argument("--channels", type=int, choices=(1, 3), help="with --test: default: the synthetic images'")
    e.add_argument("--resize", choices=RESIZE_POLICIES, default=DEFAULT_RESIZE, help="with --test: resize policy")
    e.add_argument("--json", help="also write accuracy and per-class metrics to this JSON file")
    e.add_argument("--data-root")
    e.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if not found")
    e.add_argument(
        "--aux-per-class", type=int, default=100, help="test images per class excluded (the auxiliary slice)"
    )
    e.add_argument("--eval-runs", type=int, default=EvaluationConfig.runs)
    e.add_argument("--eval-epochs", type=int, default=EvaluationConfig.epochs)
    e.add_argument("--eval-width", type=int, default=EvaluationConfig.width)
    compute_options(e, "the trainings")
    e.set_defaults(func=cmd_evaluate)

"""A user's own images through every entry point, not only ``simulate``: the owner's gRPC service
with a 64 px RGB ImageFolder and the distiller's own public folders, ``evaluate --test``, ``audit
--data``, ``speed --data``, several simulated owners sharing a user's set, and the Flower run config.

The images are scikit-learn's bundled handwritten digits (installed from PyPI, nothing downloaded),
written by ``dpdistill example-images`` as PNG class folders and CSV manifests.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main as bench_main
from deploy.cli import main
from deploy.example_images import write_example
from deploy.flower_app.dpdistill_flower.server_app import run_settings
from deploy.public_sets import PublicSets
from deploy.run_settings import RunSettings
from deploy.simulation import prepare_owners
from distiller_node.client import OwnerClient
from distiller_node.pipeline import run_distillation
from owner_node.config import Limits, OwnerConfig, ServiceConfig, write_config
from shared.images.npz import load_npz, save_npz
from shared.images.source import ImageSource
from shared.wire.rpc.channel import OwnerChannel, OwnerEndpoint
from tests.owner_process import free_port, start_owner_service, stop_owner_service, wait_ready

DIGITS = tuple("0123456789")


@pytest.fixture(scope="module")
def digits64(tmp_path_factory) -> Path:
    """Digits at 64 px RGB: train (private), aux (10 a class, public) and test (public)."""
    root = tmp_path_factory.mktemp("digits64") / "digits"
    write_example("digits", root, image_size=64, channels=3, aux_per_class=10, show_progress=False)
    return root


@pytest.fixture(scope="module")
def digits32(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits32") / "digits"
    write_example("digits", root, image_size=32, channels=1, aux_per_class=10, show_progress=False)
    return root


def test_example_collection_has_folders_and_matching_manifests(digits64: Path) -> None:
    summary = json.loads((digits64 / "example.json").read_text())
    assert sum(summary["images"].values()) == 1797 and summary["class_names"] == list(DIGITS)
    rows = (digits64 / "train.csv").read_text().splitlines()
    assert rows[0] == "path,label,patient_id" and len(rows) == summary["images"]["train"] + 1
    assert sum(1 for _ in (digits64 / "train").rglob("*.png")) == summary["images"]["train"]
    # Writing again into the same folder keeps it; another example there is refused.
    assert write_example("digits", digits64, 64, 3, 10, show_progress=False) == summary
    with pytest.raises(ValueError, match="different example"):
        write_example("digits", digits64, 32, 3, 10, show_progress=False)


def test_grpc_owner_service_on_a_64px_rgb_folder_with_the_distillers_own_public_folders(
    digits64: Path, tmp_path: Path
) -> None:
    """The owner serves its own 64x64 RGB ImageFolder over gRPC (its own process, as an operator runs
    it); the distiller has only its own public auxiliary and test folders, and learns far above chance."""
    public = PublicSets(aux=str(digits64 / "aux"), test=str(digits64 / "test"), image_size=64, channels=3)
    aux, test = public.load(show_progress=False)
    owner_dir = tmp_path / "owner"
    owner_dir.mkdir()
    save_npz(owner_dir / "aux.npz", aux)  # the public auxiliary set, as agreed with the distiller
    port = free_port()
    config = OwnerConfig(
        owner_id="hospital",
        data_source="image-folder",
        data_path=digits64 / "train",
        aux_path=Path("aux.npz"),
        ledger_path=Path("ledger.sqlite"),
        epsilon=8.0,
        delta=1e-5,
        image_size=64,
        channels=3,
        limits=Limits(max_sample_rate=0.5),
        service=ServiceConfig(listen=f"127.0.0.1:{port}"),
    )
    write_config(owner_dir / "owner.toml", config)
    proc = start_owner_service(owner_dir / "owner.toml", tmp_path / "owner.log")
    channel = OwnerChannel(OwnerEndpoint(f"127.0.0.1:{port}"), timeout_s=300)
    try:
        wait_ready(channel, proc, tmp_path / "owner.log")
        cfg = RunSettings(
            preset="quick", epsilon=8.0, ipc=2, group_size=20.0, draws_per_request=10, eval_runs=1,
            width=16, draws=20, subspace_dim=16, iterations=200, eval_epochs=60, eval_width=32,
        ).distiller_config()  # fmt: skip
        results = run_distillation(
            OwnerClient(channel.call, "hospital"), cfg, tmp_path / "distiller", aux, test, show_progress=False
        )
    finally:
        stop_owner_service(proc)
        channel.close()
    assert results["test_accuracy"]["mean"] > 0.4, results["test_accuracy"]  # chance is 0.1
    assert results["epsilon_prv"] <= 8.0
    report = json.loads((tmp_path / "distiller" / "privacy_report.json").read_text())
    assert report["image_shape"] == [3, 64, 64]
    blob = torch.load(tmp_path / "distiller" / "synthetic.pt", weights_only=True)
    assert blob["images"].shape == (20, 3, 64, 64) and tuple(blob["class_names"]) == DIGITS
    # evaluate: the exported set against the distiller's own test folder (its size and channels by default)
    assert main(["evaluate", str(tmp_path / "distiller" / "synthetic.pt"), "--test", str(digits64 / "test"),
                 "--eval-runs", "1", "--eval-epochs", "5", "--eval-width", "16", "--precision", "float32",
                 "--json", str(tmp_path / "evaluate.json")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "evaluate.json").read_text())
    assert evaluated["compute"]["precision"] == "float32" and 0 <= evaluated["test_accuracy"]["mean"] <= 1


def test_evaluate_refuses_a_test_set_of_other_classes_or_shape(
    digits64: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blob = {
        "images": torch.zeros(20, 3, 64, 64),
        "labels": torch.arange(10).repeat_interleave(2),
        "class_names": [f"c{i}" for i in range(10)],
        "normalization": [0.5, 0.25],
    }
    torch.save(blob, tmp_path / "synthetic.pt")
    assert main(["evaluate", str(tmp_path / "synthetic.pt"), "--test", str(digits64 / "test")]) == 2
    assert "class names differ" in capsys.readouterr().err
    blob["class_names"] = list(DIGITS)
    torch.save(blob, tmp_path / "synthetic.pt")
    args = ["evaluate", str(tmp_path / "synthetic.pt"), "--test", str(digits64 / "test"), "--channels", "1"]
    assert main(args) == 2
    assert "--image-size and --channels" in capsys.readouterr().err


def test_audit_takes_a_users_images_without_an_owner_config(digits32: Path, tmp_path: Path, capsys) -> None:
    args = ["audit", "--out", str(tmp_path / "audit"), "--data", str(digits32 / "train.csv"), "--aux",
            str(digits32 / "aux"), "--image-size", "32", "--channels", "1", "--trials", "30",
            "--private-per-class", "4", "--subspace-dim", "8", "--width", "8", "--no-progress"]  # fmt: skip
    assert bench_main(args) in (0, 1)  # 30 trials: the verdict is weak, but the game ran on these images
    result = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert result["config"]["network"]["image_size"] == 32 and result["config"]["network"]["depth"] == 3
    assert bench_main(["audit", "--out", str(tmp_path / "b"), "--data", str(digits32 / "train")]) == 2
    assert "--aux" in capsys.readouterr().err


def test_speed_benchmark_on_a_users_images(digits32: Path, tmp_path: Path) -> None:
    args = ["speed", "--json", str(tmp_path / "speed.json"), "--data", str(digits32 / "train"), "--aux",
            str(digits32 / "aux"), "--image-size", "32", "--channels", "1", "--width", "8", "--subspace-dim",
            "8", "--draws", "2", "--iterations", "3"]  # fmt: skip
    assert bench_main(args) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["settings"]["image_shape"] == [1, 32, 32] and result["sampling_s_per_draw"] > 0
    assert result["machine"]


def test_several_simulated_owners_share_a_users_set_disjointly(digits32: Path, tmp_path: Path) -> None:
    private = ImageSource("image-folder", digits32 / "train", 32, 1)
    aux, _ = PublicSets(aux=str(digits32 / "aux"), image_size=32, channels=1).load(show_progress=False)
    paths = prepare_owners(tmp_path, aux, 1.0, 1e-5, None, None, num_owners=3, private=private)
    shares = [load_npz(p.parent / "private.npz") for p in paths]
    configs = [OwnerConfig.load(p) for p in paths]
    assert all(c.normalization is None for c in configs)  # the public auxiliary set's, not Fashion-MNIST's
    assert all(s.class_names == DIGITS and s.images.shape[1:] == (1, 32, 32) for s in shares)
    sizes = [len(s) for s in shares]  # equal shares that together are the whole set
    assert sum(sizes) == json.loads((digits32 / "example.json").read_text())["images"]["train"]
    assert max(sizes) - min(sizes) <= 1


def test_flower_run_config_names_the_distillers_own_public_sets(digits32: Path) -> None:
    public = PublicSets(aux=str(digits32 / "aux"), test=str(digits32 / "test"), image_size=32, channels=1)
    rc = {"preset": "quick", **public.run_config()}
    _, _, from_rc, _ = run_settings(rc)
    assert from_rc == replace(public, aux_per_class=from_rc.aux_per_class)
    aux, test = from_rc.load(show_progress=False)
    assert aux.class_names == DIGITS and test is not None and test.images.shape[1:] == (1, 32, 32)
    _, _, default, _ = run_settings({"preset": "quick"})
    assert default.is_fashion_mnist
    with pytest.raises(ValueError, match="auxiliary set"):
        PublicSets(test=str(digits32 / "test"))


def test_simulate_with_a_holdout_and_dp_counts_then_owner_evaluate(digits32: Path, tmp_path: Path, capsys) -> None:
    """The hospital path from the command line: the owner keeps a held-out share and publishes its
    class counts with DP; after the run it evaluates the synthetic set on its own held-out images."""
    run = tmp_path / "run"
    args = ["simulate", "--out", str(run), "--data", str(digits32 / "train.csv"), "--aux", str(digits32 / "aux"),
            "--image-size", "32", "--channels", "1", "--preset", "quick", "--epsilon", "8", "--ipc", "2",
            "--draws", "10", "--draws-per-request", "10", "--subspace-dim", "8", "--iterations", "50",
            "--holdout", "0.2", "--class-counts-epsilon", "0.5", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    owner = OwnerConfig.load(run / "owner" / "owner.toml")
    assert (owner.holdout, owner.class_counts, owner.class_counts_epsilon) == (0.2, "dp", 0.5)
    report = json.loads((run / "distiller" / "privacy_report.json").read_text())
    assert any("published with DP" in fact for fact in report["treated_as_public"])
    assert report["epsilon_prv"] <= 8.0
    capsys.readouterr()
    config = str(run / "owner" / "owner.toml")
    evaluate = ["owner-evaluate", str(run / "distiller" / "synthetic.pt"), "--config", config]
    assert main([*evaluate, "--eval-runs", "1", "--eval-epochs", "5", "--eval-width", "16", "--no-progress"]) == 0
    out = json.loads((run / "owner" / "owner_evaluation" / "synthetic" / "owner_evaluation.json").read_text())
    train = json.loads((digits32 / "example.json").read_text())["images"]["train"]
    assert abs(out["held_out_images"] - 0.2 * train) <= 10 and "NOT differentially private" in capsys.readouterr().out

"""Issue 26 parts 3, 4 and 6: the owner says what it loaded, a run that cannot learn says so before it
spends, ``--dry-run`` spends nothing, and what people look at (grid, loss curve, logs) is readable."""

from __future__ import annotations

import io
import json
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy.cli import main
from deploy.run_settings import RunSettings
from distiller_node.client import OwnerClient
from distiller_node.export import labelled_grid, plot_loss, smoothing_window
from distiller_node.pipeline import run_distillation
from distiller_node.plan_summary import PRIOR_COST
from owner_node.config import OwnerConfig
from owner_node.load_summary import SUMMARY_FILE
from owner_node.service import OwnerService
from shared.images.npz import load_npz, save_npz
from shared.progress import PlainProgress, progress_bar
from shared.signal_to_noise import LOW_SNR, class_snr, low_classes
from tests.conftest import make_owner_config, random_image_set


def write_png_folder(root: Path, counts: dict[str, int], size: int = 16, mode: str = "RGB") -> None:
    g = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(g.integers(0, 255, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def folder_owner(tmp_path: Path, counts: dict[str, int], **settings) -> OwnerConfig:
    write_png_folder(tmp_path / "private", counts)
    (tmp_path / "private" / "a").joinpath("notes.txt").write_text("not an image")
    (tmp_path / "private" / ".DS_Store").write_text("")
    write_png_folder(tmp_path / "aux", {name: 4 for name in counts})
    owner = tmp_path / "owner"
    owner.mkdir()
    from deploy.public_sets import PublicSets

    aux, _ = PublicSets(aux=str(tmp_path / "aux"), image_size=16, channels=1).load(show_progress=False)
    save_npz(owner / "aux.npz", aux)
    base = dict(
        owner_id="hospital",
        data_source="image-folder",
        data_path=tmp_path / "private",
        aux_path=owner / "aux.npz",
        ledger_path=owner / "ledger.sqlite",
        epsilon=1.0,
        delta=1e-5,
        image_size=16,
        channels=1,
    )
    return OwnerConfig(**(base | settings))


# ---------------------------------------------------------------- part 3: the load summary


def test_owner_start_up_prints_and_writes_what_it_loaded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = folder_owner(tmp_path, {"a": 30, "b": 12, "c": 3})
    service = OwnerService(config)
    service.close()
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "owner" / SUMMARY_FILE).read_text())
    assert [(c["name"], c["images"]) for c in summary["classes"]] == [("a", 30), ("b", 12), ("c", 3)]
    assert summary["images"] == 45 and summary["ignored_files"] == 2  # notes.txt and .DS_Store
    assert summary["published"]["class_counts"] == [30, 12, 3] and summary["published"]["clip_norm"] == 1.0
    assert summary["format"]["image_shape"] == [1, 16, 16]
    assert summary["load_report"]["source"].startswith("image-folder")  # the loader's report, field by field
    # class c: 3 images at the default max_sample_rate 0.05 is 0.15 records a draw: mostly noise
    assert any("'c' (3 images)" in w for w in summary["warnings"]) and not any("'a'" in w for w in summary["warnings"])
    assert "loaded image-folder" in printed and "WARNING: too few images" in printed and "ignored files: 2" in printed
    # RGB files read as 1 channel: said, not done silently; the size already matched
    assert len(summary["conversions"]) == 1 and "colour images converted to 1 channel" in summary["conversions"][0]
    assert "converted: colour images" in printed and summary["format"]["source"]["modes"] == {"RGB": 45}
    # DP class counts: the printed log keeps to the published (noisy) counts; the true ones stay in the file
    OwnerService(replace(config, class_counts="dp", class_counts_epsilon=0.1)).close()
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "owner" / SUMMARY_FILE).read_text())
    assert [c["images"] for c in summary["classes"]] == [30, 12, 3]
    assert summary["published"]["class_counts_kind"] == "dp"
    assert "published with DP" in printed and "30 images" not in printed and "too few" not in printed


def test_load_summary_counts_patients_in_patient_mode(tmp_path: Path) -> None:
    write_png_folder(tmp_path / "images", {"a": 6, "b": 6})
    rows = ["path,label,patient_id"] + [f"images/{n}/{i}.png,{n},p{i // 2}" for n in "ab" for i in range(6)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    config = folder_owner(tmp_path / "x", {"a": 1, "b": 1})
    config = replace(config, data_source="csv", data_path=tmp_path / "train.csv", privacy_unit="patient")
    OwnerService(config).close()
    summary = json.loads(Path(config.ledger_path).with_name(SUMMARY_FILE).read_text())
    # p0..p2 hold class a's images and class b's (ids are shared across classes): 3 patients in all
    assert summary["patients"] == 3 and [c["patients"] for c in summary["classes"]] == [3, 3]
    assert any("too few patients" in w for w in summary["warnings"])
    assert "patient_id_lookalikes" not in summary and not any("letter case" in w for w in summary["warnings"])


def test_patient_ids_that_differ_only_in_case_or_zeros_are_warned_about_in_the_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A spreadsheet that drops leading zeros from one export splits a patient in two, who could then move a
    release by 2C: the owner says so at start-up, counting them; the ids themselves stay in the summary file."""
    write_png_folder(tmp_path / "images", {"a": 6, "b": 6})
    ids = ["MRN007", "MRN7", "MRN8", "mrn8", "MRN9", "MRN10"]
    rows = ["path,label,patient_id"] + [f"images/{n}/{i}.png,{n},{ids[i]}" for n in "ab" for i in range(6)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    config = folder_owner(tmp_path / "x", {"a": 1, "b": 1})
    config = replace(config, data_source="csv", data_path=tmp_path / "train.csv", privacy_unit="patient")
    OwnerService(config).close()
    printed = capsys.readouterr().out
    summary = json.loads(Path(config.ledger_path).with_name(SUMMARY_FILE).read_text())
    assert summary["patients"] == 6  # counted as written: they may be different people
    assert summary["patient_id_lookalikes"] == {"groups": 2, "first": [["MRN007", "MRN7"], ["MRN8", "mrn8"]]}
    assert any(w.startswith("2 groups of patient ids differ only in letter case") for w in summary["warnings"])
    assert "WARNING: 2 groups of patient ids" in printed and "MRN007" not in printed and "mrn8" not in printed


# ---------------------------------------------------------------- part 4: signal-to-noise and --dry-run


def test_signal_to_noise_formula() -> None:
    # 5 records a draw, 100 draws, sigma 2, 25 numbers: 5 * 10 / (2 * 5) = 5
    assert class_snr([[5.0]], [2.0], 100, 25) == [pytest.approx(5.0)]
    # two owners answering the same seeds: records add up, noise variances add up
    assert class_snr([[3.0], [4.0]], [3.0, 4.0], 1, 1) == [pytest.approx(7 / 5)]
    assert low_classes([LOW_SNR / 2, LOW_SNR * 2], ["rare", "common"]) == ["rare"]
    assert math.isinf(class_snr([[1.0]], [0.0], 1, 1)[0])


def _plan_only(service: OwnerService, tmp_path: Path, subspace_dim: int = 16, **settings) -> dict:
    cfg = RunSettings(
        preset="quick", epsilon=1.0, ipc=1, draws_per_request=10, eval_runs=1, width=8, draws=20,
        subspace_dim=subspace_dim, **settings,
    ).distiller_config()  # fmt: skip
    aux = load_npz(service.config.aux_path)
    client = OwnerClient(service.call, service.config.owner_id)
    return run_distillation(client, cfg, tmp_path / "run", aux, None, False, dry_run=True)


def test_a_set_too_small_to_learn_from_is_warned_about_before_anything_is_reserved(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    small = OwnerService(make_owner_config(tmp_path / "small", epsilon=1.0, max_sample_rate=0.05))  # 20 a class
    try:
        plan = _plan_only(small, tmp_path / "a")["plan"]  # 1 record a draw: SNR 0.8
    finally:
        small.close()
    out = capsys.readouterr().out
    assert plan["low_snr_classes"] == ["class0", "class1", "class2", "class3"]
    assert "expected signal-to-noise per class" in out and "WARNING: every class below" in out
    large = make_owner_config(tmp_path / "large", epsilon=50.0, max_sample_rate=1.0)
    save_npz(large.data_path, random_image_set(4000, seed=1))
    service = OwnerService(large)
    try:
        plan = _plan_only(service, tmp_path / "b", group_size=500.0)["plan"]
    finally:
        service.close()
    assert plan["low_snr_classes"] == [] and min(plan["snr"]) > LOW_SNR
    assert "WARNING: every class" not in capsys.readouterr().out
    assert plan["expected_seconds"]["sampling"] > 0


def _ledger_rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("releases", "plans")}


def _simulate_args(tmp_path: Path, *extra: str) -> list[str]:
    data, aux = tmp_path / "private.npz", tmp_path / "aux.npz"
    if not data.exists():
        save_npz(data, random_image_set(80, seed=1))
        save_npz(aux, random_image_set(40, seed=2))
    return ["simulate", "--out", str(tmp_path / "run"), "--data", str(data), "--aux", str(aux), "--preset", "quick",
            "--ipc", "1", "--draws", "4", "--draws-per-request", "2", "--subspace-dim", "4", "--width", "8",
            "--iterations", "3", "--eval-runs", "1", "--eval-epochs", "1", "--eval-width", "8", "--no-progress",
            "--device", "cpu", *extra]  # fmt: skip


def test_dry_run_prints_the_plan_and_spends_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_simulate_args(tmp_path, "--dry-run", "--class-counts-epsilon", "0.1")) == 0
    out = capsys.readouterr().out
    for words in ("plan for owner", "sigma=", "q=", "planned epsilon=", "group size", "signal-to-noise", "wall time"):
        assert words in out, words
    ledger = tmp_path / "run" / "owner" / "ledger.sqlite"
    assert not ledger.exists()  # not even the DP class counts were drawn
    assert not (tmp_path / "run" / "distiller").exists()  # no plan, no config: a later run is free to choose
    # after a real run, a dry run leaves the ledger as it was
    assert main(_simulate_args(tmp_path, "--class-counts-epsilon", "0.1")) == 0
    before, data = _ledger_rows(ledger), ledger.read_bytes()
    assert before["releases"] >= 1 and before["plans"] == 1
    assert main(_simulate_args(tmp_path, "--dry-run", "--class-counts-epsilon", "0.1")) == 0
    assert _ledger_rows(ledger) == before and ledger.read_bytes() == data
    assert "dry run: no owner was asked to hold budget" in capsys.readouterr().out


def test_deploy_local_dry_run_prints_the_plan_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``deploy-local --dry-run`` read its run settings as a dict after they became ``RunSettings`` (an
    AttributeError before any plan); it plans with the owners set up in a scratch folder."""
    args = _simulate_args(tmp_path, "--dry-run")
    args = ["deploy-local", *[a for a in args[1:] if a != "--no-progress"]]
    assert main(args) == 0
    out = capsys.readouterr().out
    for words in ("plan for owner", "sigma=", "planned epsilon="):
        assert words in out, words
    assert not list((tmp_path / "run").rglob("ledger.sqlite"))  # no owner set up, nothing spent


# ---------------------------------------------------------------- part 6: outputs people look at


def test_progress_off_a_terminal_is_plain_lines() -> None:
    stream = io.StringIO()
    bar = progress_bar(total=10, desc="sampling", unit="draw", file=stream, interval=0.0)
    assert isinstance(bar, PlainProgress)
    with bar:
        for _ in range(10):
            bar.update(1)
        bar.set_postfix(loss="0.5")
    text = stream.getvalue()
    assert "\r" not in text and "sampling: 10/10 (100%)" in text and "loss=0.5" in text
    quiet = io.StringIO()
    assert list(progress_bar(range(3), desc="x", file=quiet, disable=True)) == [0, 1, 2] and quiet.getvalue() == ""
    slow = io.StringIO()
    with progress_bar(total=1000, desc="slow", file=slow) as bar:  # default interval: one line at the end
        for _ in range(1000):
            bar.update(1)
    assert slow.getvalue().count("\n") == 1


def test_grid_rows_are_labelled_and_the_loss_curve_reads_at_any_length(tmp_path: Path) -> None:
    pixels = torch.zeros(6, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    grid = labelled_grid(pixels, labels, ("cat", "dog", "a much longer class name"))
    plain = labelled_grid(pixels, labels, ("c", "d", "e"))
    assert grid.height == plain.height and grid.width > plain.width  # the names take a margin at the left
    left = np.asarray(grid.convert("L"))[:, : grid.width - plain.width + 10]
    assert (left < 128).any()  # some text was drawn there
    assert smoothing_window(5) == 0 and smoothing_window(40) == 4 and smoothing_window(200_000) == 500
    for n in (1, 5, 40, 3000):
        plot_loss(tmp_path / f"loss{n}.png", [1.0 / (i + 1) for i in range(n)])
        assert (tmp_path / f"loss{n}.png").stat().st_size > 0


def test_the_plans_time_estimate_follows_the_precision_and_the_prior(tmp_path: Path) -> None:
    """bf16 passes cost a fitted fraction of float32's (the README's default runs in bf16 on AVX512-BF16 CPUs);
    the auxiliary prior costs the optimisation ``PRIOR_COST``; the owner's sampling depends on neither."""
    service = OwnerService(make_owner_config(tmp_path / "owner", epsilon=1.0))
    runs = {"float32": ("float32", 0.0), "bf16": ("bf16", 0.0), "bf16 with prior": ("bf16", 1.0)}
    try:
        t = {
            name: _plan_only(service, tmp_path / name.replace(" ", "_"), precision=p, aux_prior=w)["plan"][
                "expected_seconds"
            ]
            for name, (p, w) in runs.items()
        }
    finally:
        service.close()
    assert t["bf16"]["sampling"] == t["float32"]["sampling"] == t["bf16 with prior"]["sampling"]
    for stage in ("optimisation", "evaluation"):
        assert t["bf16"][stage] < t["float32"][stage] / 2
    assert t["bf16 with prior"]["optimisation"] == pytest.approx(PRIOR_COST * t["bf16"]["optimisation"])
    assert t["bf16 with prior"]["evaluation"] == t["bf16"]["evaluation"]

"""The frontier benchmark's harness: public splits that do not overlap, settings chosen by validation
accuracy and never by test accuracy, points kept across restarts, and a sigma-0 reference that
releases exactly the clean sums (and exists only in the harness)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks import frontier
from benchmarks.reference_points import NoiseFreeMechanism, distribution_matching_state
from deploy.run_settings import RunSettings
from distiller_node.optimisation import initial_state
from owner_node.data import PrivateData
from owner_node.mechanism import FeatureMechanism, clean_class_sums
from shared.compute.networks import NetworkSpec, build_network, freeze
from shared.datasets import to_float
from shared.evaluation import evaluate
from shared.evaluation_config import EvaluationConfig
from shared.images.fashion_mnist import FASHION_MNIST_NORMALIZATION
from shared.images.npz import load_npz
from tests.conftest import SPEC, feature_request, random_image_set
from tests.test_datasets import _write_idx


def test_public_splits_are_disjoint_and_sized(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DPDISTILL_DATA_CACHE", str(tmp_path / "cache"))
    _write_idx(tmp_path / "idx", 2000, gz=False)  # 200 images of each class; every image distinct
    public = frontier.prepare_public(tmp_path / "public", str(tmp_path / "idx"))
    sets = {n: load_npz(public / f"{n}.npz") for n in ("aux", "validation", "test")}
    assert [len(sets[n]) for n in ("aux", "validation", "test")] == [500, 1000, 500]
    assert sets["validation"].labels.bincount().tolist() == [100] * 10
    seen = [{bytes(x.numpy()) for x in sets[n].images} for n in sets]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def _fake_run(out: Path, point: frontier.Point, validation: float, test: float) -> None:
    folder = out / point.name
    folder.mkdir(parents=True)
    run = {"validation_accuracy_mean": validation, "test_accuracy_mean": test}
    (folder / "run.json").write_text(json.dumps(run))


def test_settings_are_chosen_by_validation_not_test_accuracy(tmp_path: Path) -> None:
    preset, candidates = frontier.METHOD_CANDIDATES["dos-ser"]
    (a, a_over), (b, b_over), *others = candidates.items()
    eps, ipc = frontier.SELECT_AT
    _fake_run(tmp_path, frontier.Point("dos-ser", eps, ipc, a, a_over), validation=0.70, test=0.90)
    for other, over in others:
        _fake_run(tmp_path, frontier.Point("dos-ser", eps, ipc, other, over), validation=0.60, test=0.95)
    assert frontier.chosen(tmp_path, "dos-ser") is None  # not until every candidate has run
    names = [p.name for p in frontier.planned_points(tmp_path)]
    assert not any(n.startswith("dos-ser_eps0.5") for n in names)
    _fake_run(tmp_path, frontier.Point("dos-ser", eps, ipc, b, b_over), validation=0.75, test=0.60)
    assert frontier.chosen(tmp_path, "dos-ser") == (b, b_over)
    points = frontier.planned_points(tmp_path)
    later = [p for p in points if p.method == "dos-ser" and p.epsilon != eps]
    assert {p.epsilon for p in later} >= {0.5, 2.0, 5.0, 10.0} and all(p.candidate == b for p in later)
    assert any(p.method == "no-noise" and p.candidate == b for p in points)
    assert any(p.method == "dm" and p.candidate == b and p.name.startswith("dm_epsinf") for p in points)
    # finished points are kept: only the others remain to run
    todo = [p for p in points if frontier.load_run(tmp_path, p) is None]
    assert all(p.name not in (f"dos-ser_eps1_ipc10_{a}", f"dos-ser_eps1_ipc10_{b}") for p in todo)


def test_the_no_noise_reference_releases_the_clean_sums_and_the_owner_never_does() -> None:
    data = PrivateData.from_image_set(random_image_set(80, 1), (0.5, 0.25))
    aux = torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    request = feature_request(None, draws=1, noise_multiplier=2.0, expected_group_size=1e9)  # q = 1: every image
    released = NoiseFreeMechanism(data, aux, 1.0).release(request).noisy_sums[0]
    net, subspace = FeatureMechanism(data, aux, 1.0).network_and_subspace(SPEC, 11, 6)
    images = data.images.float().div(255).sub(0.5).div(0.25)
    clean = clean_class_sums(net, subspace, images, data.labels, 101, request.augmentation, 1.0, 4)
    assert torch.allclose(torch.from_numpy(released).double(), clean, atol=1e-5)
    noisy = FeatureMechanism(data, aux, 1.0).release(request).noisy_sums[0]
    assert (torch.from_numpy(noisy).double() - clean).abs().max() > 0.1  # sigma C = 2 in every coordinate


def _dm_distance(images: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor) -> float:
    """DM's loss over whole classes on ten networks the optimisation never drew (no augmentation)."""
    spec = NetworkSpec(width=8, depth=2, channels=1, image_size=16, num_classes=4)
    total = 0.0
    for seed in range(10**6, 10**6 + 10):
        net = freeze(build_network(spec, seed))
        with torch.no_grad():
            a, b = net.embed(images), net.embed(real)
        total += sum(float((a[labels == c].mean(0) - b[real_labels == c].mean(0)).square().sum()) for c in range(4))
    return total


def test_the_dm_reference_matches_the_private_class_means_reproducibly() -> None:
    """The non-private DM reference: it moves the synthetic class means towards the private ones (on
    networks it never drew), the same seed gives the same set, and the global RNG is left alone."""
    train = random_image_set(400, 1)
    train.labels[:] = torch.arange(400) % 4
    train.images[train.labels == 1] //= 2  # classes that differ, so there is something to match
    train.images[train.labels == 2] = 255 - train.images[train.labels == 2] // 3
    aux = random_image_set(40, 2, num_classes=4)
    cfg = RunSettings(
        preset="default", ipc=2, width=8, iterations=40, group_size=20, precision="float32", init="aux"
    ).distiller_config()
    rng = torch.get_rng_state()
    state, timings = distribution_matching_state(cfg, aux, train, False)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(distribution_matching_state(cfg, aux, train, False)[0].images, state.images)
    norm = FASHION_MNIST_NORMALIZATION
    real = to_float(train.images, norm)
    start = initial_state(4, 2, (1, 16, 16), 0, "aux", (to_float(aux.images, norm), aux.labels))
    before = _dm_distance(start.images, start.labels, real, train.labels)
    after = _dm_distance(state.images, state.labels, real, train.labels)
    assert after < 0.5 * before, (before, after)
    assert timings["sampling_s"] == 0.0 and len(state.losses) == 40


def test_one_evaluation_scores_validation_and_test_with_the_same_trainings() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 16, 16, generator=g), torch.arange(20) % 4
    t, ty = torch.randn(30, 1, 16, 16, generator=g), torch.arange(30) % 4
    cfg = EvaluationConfig(runs=2, epochs=2, width=8, depth=2, augmentation="none")
    both = evaluate(x, y, t, ty, 4, cfg, False, other_sets={"validation": (t, ty)})
    assert both.other("validation")["runs"] == both.accuracies


def test_published_points_carry_over_to_a_fresh_run_folder(tmp_path: Path) -> None:
    first, docs, fresh = tmp_path / "a", tmp_path / "docs", tmp_path / "b"
    point = frontier.Point("aux-only", None, frontier.SELECT_AT[1], "public")
    _fake_run(first, point, validation=0.7, test=0.7)
    (first / "frontier.json").write_text("{}")
    (first / "frontier.png").write_bytes(b"png")
    frontier.publish(first, docs)
    assert (docs / "points" / f"{point.name}.json").exists() and (docs / "frontier.png").exists()
    assert frontier.import_points(fresh, docs) == 1
    assert frontier.load_run(fresh, point) == frontier.load_run(first, point)
    assert frontier.import_points(fresh, docs) == 0  # what is there is kept


def test_parallel_jobs_run_every_point_once_and_wait_for_the_selection(tmp_path: Path, monkeypatch) -> None:
    """``--jobs 2``: two points at a time, each once; the points that follow a selection start only after it."""
    import threading
    import time

    (tmp_path / "public").mkdir()
    for name in ("aux", "validation", "test"):
        (tmp_path / "public" / f"{name}.npz").write_bytes(b"")  # prepare_public keeps what is there
    lock, running, seen = threading.Lock(), [0], {"most": 0, "order": []}

    def fake_point(out: Path, point: frontier.Point, *args) -> dict:
        with lock:
            running[0] += 1
            seen["most"] = max(seen["most"], running[0])
            seen["order"].append(point.name)
            # Every candidate at the selection point has finished before a chosen candidate's other point.
            if point.epsilon not in (frontier.SELECT_AT[0], None) and point.method in frontier.METHOD_CANDIDATES:
                assert frontier.chosen(out, point.method) is not None
        time.sleep(0.2)  # long enough that the other job is running too
        run = {
            "test_accuracy_mean": 0.5, "test_accuracy_std": 0.0,
            "validation_accuracy_mean": 0.5 + 0.01 * len(point.name), "validation_accuracy_std": 0.0,
            "epsilon_prv": point.epsilon, "epsilon_rdp": point.epsilon, "delta": 1e-5,
            "wall_s": 1.0, "stage_s": {}, "peak_rss_mb": 1.0, "config": {},
        }  # fmt: skip
        (out / point.name).mkdir(parents=True, exist_ok=True)
        (out / point.name / "run.json").write_text(json.dumps(run))
        with lock:
            running[0] -= 1
        return run

    monkeypatch.setattr(frontier, "run_point", fake_point)
    result = frontier.frontier(tmp_path, threads=1, jobs=2)
    assert not result["pending"] and len(seen["order"]) == len(set(seen["order"])) == len(result["runs"])
    assert seen["most"] == 2


def test_a_reference_is_reused_only_where_it_reads_the_same_settings(tmp_path: Path) -> None:
    """Plain DM reads neither the projection nor the prior: its point for one candidate stands for a candidate
    that differs only there (copied, naming its source), and never for one whose budget or start differs;
    the no-noise reference, which reads both, is never reused across them."""
    from benchmarks.reference_points import reference_config

    _, candidates = frontier.METHOD_CANDIDATES["dos-ser"]

    def settings(cand: str) -> dict:
        return {"preset": "default", "ipc": 10, "overrides": candidates[cand] | {"eval_runs": 3}}

    def measured(method: str, cand: str) -> frontier.Point:
        point = frontier.Point(method, None, 10, cand, candidates[cand])
        (tmp_path / point.name).mkdir()
        run = {"test_accuracy_mean": 0.8, "config": reference_config(settings(cand))}
        (tmp_path / point.name / "run.json").write_text(json.dumps(run))
        return point

    source = measured("dm", "prior-1")
    measured("no-noise", "prior-1")
    k50 = frontier.Point("dm", None, 10, "prior-1-k50", candidates["prior-1-k50"])
    run = frontier.reuse_reference(tmp_path, k50, settings("prior-1-k50"))
    assert run is not None and run["reused_from"] == source.name
    assert frontier.load_run(tmp_path, k50) == run
    # A different start or budget (init-aux: group 50, 200 draws) is computed, not reused.
    assert frontier.reuse_reference(tmp_path, frontier.Point("dm", None, 10, "init-aux"), settings("init-aux")) is None
    # So is no-noise, which does read k and the prior; and a copy is never the source of another copy.
    nn = frontier.Point("no-noise", None, 10, "prior-1-k50", candidates["prior-1-k50"])
    assert frontier.reuse_reference(tmp_path, nn, settings("prior-1-k50")) is None
    (tmp_path / source.name / "run.json").unlink()
    k200 = frontier.Point("dm", None, 10, "prior-1-k200", candidates["prior-1-k200"])
    assert frontier.reuse_reference(tmp_path, k200, settings("prior-1-k200")) is None


def test_each_run_folder_has_its_own_log_even_with_a_dot_in_its_name() -> None:
    """``eps0.5`` and ``eps0`` once logged into one file (``with_suffix`` cut the name at the dot)."""
    from shared.measurement import run_log

    names = [frontier.Point("dos-ser", e, 10, "prior-1").name for e in (0.5, 5.0, 1.0)]
    logs = [run_log(Path("out") / n) for n in names]
    assert len(set(logs)) == 3 and logs[0] == Path("out") / "dos-ser_eps0.5_ipc10_prior-1.log"


def test_a_candidates_overrides_become_simulate_options_flags_included() -> None:
    """``--pea`` is a flag: passed as ``--pea True`` it would be a stray argument and the point would fail."""
    args = frontier.override_args({"draws": 100, "aux_prior": 1.0, "pea": True, "init": "aux"})
    assert args == ["--draws", "100", "--aux-prior", "1.0", "--pea", "--init", "aux"]
    assert frontier.override_args({"pea": False}) == ["--no-pea"]
    from deploy.cli import build_parser

    parsed = build_parser().parse_args(["simulate", *args])
    assert parsed.pea is True and parsed.draws == 100 and parsed.aux_prior == 1.0

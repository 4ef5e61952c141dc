"""What the owner loaded, said at start-up before anything is served or reserved.

The summary (printed, and written as ``load_summary.json`` beside the ledger) gives the counts per
class, the patients in patient mode, the files the loader ignored or skipped (by reason), the pixel
format everything was brought to and what that converted (colour to gray, gray to colour, 16-bit
stretched, resized: read from the headers of a sample of the files), the images held out, and the
public facts the owner publishes
(Describe). It also warns where a class is too small to be learnt from at any plan this owner would
accept: the distiller's expected signal-to-noise (``shared.signal_to_noise``) is bounded by the
records a draw can hold at the owner's highest sampling rate.

The loader's report is read field by field by name (``dataclasses.fields``), so whatever it comes to
record is carried into the JSON as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import torch

from owner_node.config import OwnerConfig
from owner_node.data import PrivateData
from shared.signal_to_noise import records_per_draw_bound
from shared.wire.messages import OwnerInfo

SUMMARY_FILE = "load_summary.json"
LOOKALIKES_KEPT = 20  # look-alike patient id groups the summary file lists (all are counted)
# A class whose draws hold fewer records than this on average, at the owner's highest rate, is
# mostly noise in every release (shared.signal_to_noise: the signal scales with the records).
FEW_RECORDS_PER_DRAW = 1.0
# Loader report fields that are lists of files: shown as counts and a few examples, not in full.
EXAMPLES = 5


def patients_per_class(data: PrivateData) -> list[int] | None:
    """Patient mode: how many patients have at least one image of each class."""
    if data.patients is None:
        return None
    num_classes = len(data.class_names)
    pairs = torch.unique(data.patients * num_classes + data.labels)
    return torch.bincount(pairs % num_classes, minlength=num_classes).tolist()


def reason_of(message: str) -> str:
    """A skip reason without its file-specific detail ('cannot be decoded as an image (OSError: ...)')."""
    return message.split(" (", 1)[0].strip() or message


SAMPLED_HEADERS = 64
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def source_formats(files: tuple[str, ...], limit: int = SAMPLED_HEADERS) -> dict:
    """Pixel modes and sizes of an evenly spaced sample of the files (Pillow reads only their headers)."""
    from PIL import Image

    from shared.images.decode import is_dicom

    modes: Counter = Counter()
    sizes: Counter = Counter()
    sample = files[:: max(1, len(files) // limit)][:limit]
    for path in sample:
        try:
            if is_dicom(path):
                modes["DICOM"] += 1
                continue
            with Image.open(path) as im:
                modes[im.mode] += 1
                sizes[f"{im.width}x{im.height}"] += 1
        except Exception:  # the loader already decoded (or skipped) it: this look is only informative
            modes["unreadable"] += 1
    return {"sampled_files": len(sample), "modes": dict(modes), "sizes": dict(sizes.most_common(5))}


def conversion_notes(formats: dict, config: OwnerConfig) -> list[str]:
    """What the loader did to the sampled files to bring them to the configured format."""
    modes, sizes, n = formats["modes"], formats["sizes"], formats["sampled_files"]
    colour = sum(k for m, k in modes.items() if m not in GRAY_MODES and m not in ("DICOM", "unreadable"))
    gray = sum(k for m, k in modes.items() if m in GRAY_MODES)
    notes = []
    if config.channels == 1 and colour:
        notes.append(f"colour images converted to 1 channel (luma): {colour} of {n} sampled files are colour")
    if config.channels == 3 and gray:
        notes.append(f"gray images repeated to 3 channels: {gray} of {n} sampled files are gray")
    deep = sum(k for m, k in modes.items() if m in HIGH_DEPTH_MODES)
    if deep:
        notes.append(f"16-bit or float images stretched to 0..255 per image: {deep} of {n} sampled files")
    alpha = sum(k for m, k in modes.items() if m in ("LA", "RGBA", "PA"))
    if alpha:
        notes.append(f"transparency composited on black: {alpha} of {n} sampled files")
    target = f"{config.image_size}x{config.image_size}"
    other = {size: k for size, k in sizes.items() if size != target}
    if config.image_size is not None and other:
        how = "shorter side scaled, centre cropped" if config.resize == "crop" else "longer side scaled, padded"
        examples = ", ".join(other)
        notes.append(f"images resized to {target} ({how}): {sum(other.values())} of {n} sampled files are {examples}")
    return notes


def _report_fields(report) -> dict:
    """Every field of the loader's report, by name, with file lists cut to a count and examples."""
    names = [f.name for f in dataclasses.fields(report)] if dataclasses.is_dataclass(report) else list(vars(report))
    out: dict = {}
    for name in names:
        value = getattr(report, name)
        if isinstance(value, tuple | list) and len(value) > EXAMPLES and name not in ("class_names", "class_counts"):
            first = [list(v) if isinstance(v, tuple) else v for v in value[:EXAMPLES]]
            out[name] = {"count": len(value), "first": first}
        elif isinstance(value, tuple):
            out[name] = [list(v) if isinstance(v, tuple) else v for v in value]
        elif isinstance(value, dict):
            out[name] = {str(k): v for k, v in value.items()}
        else:
            out[name] = value
    return out


def build_summary(config: OwnerConfig, data: PrivateData, info: OwnerInfo) -> dict:
    """The load summary as a JSON-ready dict (counts are the owner's true ones: it stays with the owner)."""
    counts = data.class_counts
    patients = patients_per_class(data)
    records = patients if patients is not None else counts
    max_rate = float(config.limits.max_sample_rate)
    per_draw = records_per_draw_bound(records, max_rate)
    classes = []
    for c, name in enumerate(data.class_names):
        row: dict = {"name": name, "images": counts[c], "published_count": info.class_counts[c]}
        if patients is not None:
            row["patients"] = patients[c]
        row["records_per_draw_at_max_rate"] = round(per_draw[c], 3)
        classes.append(row)
    report = data.load_report
    skipped = list(getattr(report, "skipped", ()) or ())
    skipped_by_reason = Counter(reason_of(str(s[1]) if isinstance(s, tuple | list) else str(s)) for s in skipped)
    summary: dict = {
        "owner_id": config.owner_id,
        "source": getattr(report, "source", None) or f"{config.data_source} {config.data_path or ''}".strip(),
        "images": len(data.labels),
        "classes": classes,
        "privacy_unit": config.privacy_unit,
        "patients": data.num_patients if data.patients is not None else None,
        "held_out_images": data.held_out,
        "ignored_files": getattr(report, "ignored", 0) if report is not None else 0,
        "skipped_files": len(skipped),
        "skipped_by_reason": dict(skipped_by_reason),
        "format": {
            "image_shape": list(data.image_shape),
            "requested": {"image_size": config.image_size, "channels": config.channels, "resize": config.resize},
        },
        "conversions": [],
        "load_report": _report_fields(report) if report is not None else None,
        "published": {
            "class_names": list(info.class_names),
            "class_counts": list(info.class_counts),
            "class_counts_kind": config.class_counts,
            "image_shape": list(info.image_shape),
            "normalization": list(info.normalization),
            "clip_norm": info.clip_norm,
            "epsilon_budget": info.epsilon_budget,
            "delta": info.delta,
            "accountant": info.accountant,
            "noise_sampler": info.noise_sampler,
            "privacy_unit": info.privacy_unit,
            "aux_hash": info.aux_hash,
            "limits": dict(info.limits),
        },
    }
    if data.source_files:
        summary["format"]["source"] = source_formats(data.source_files)
        summary["conversions"] = conversion_notes(summary["format"]["source"], config)
    summary["conversions"] += list(getattr(report, "conversions", ()) or ())  # the loader's own, if it keeps any
    if data.patient_lookalikes:  # ids stay in this file, beside the ledger; the printed warning counts them
        groups = data.patient_lookalikes
        summary["patient_id_lookalikes"] = {"groups": len(groups), "first": [list(g) for g in groups[:LOOKALIKES_KEPT]]}
    summary["warnings"] = warnings_for(summary, max_rate)
    return summary


def warnings_for(summary: dict, max_rate: float) -> list[str]:
    """Plain sentences on what will not work or was changed without asking."""
    out = []
    unit = "patients" if summary["privacy_unit"] == "patient" else "images"
    small = [c for c in summary["classes"] if c["records_per_draw_at_max_rate"] < FEW_RECORDS_PER_DRAW]
    if small:
        names = ", ".join(f"{c['name']!r} ({c.get('patients', c['images'])} {unit})" for c in small)
        out.append(
            f"too few {unit} to learn from: {names} - at the highest sampling rate this owner allows "
            f"([limits] max_sample_rate = {max_rate:g}) a draw holds on average under {FEW_RECORDS_PER_DRAW:g} "
            "of them, so their releases are mostly noise at any plan"
        )
    if summary["skipped_files"]:
        out.append(f"{summary['skipped_files']} unreadable files were skipped (see skipped_by_reason)")
    if "patient_id_lookalikes" in summary:
        out.append(
            f"{summary['patient_id_lookalikes']['groups']} groups of patient ids differ only in letter case or "
            f"leading zeros (the first {LOOKALIKES_KEPT} in {SUMMARY_FILE}, patient_id_lookalikes): they count as "
            "different patients, so where one person was written two ways (a spreadsheet that dropped zeros) "
            "that person's images can move a release by more than C; correct the export if so"
        )
    return out


def format_summary(s: dict, path: Path | None = None) -> str:
    """Printable lines. With DP class counts the true counts (and the warnings, which follow from them)
    stay in the file beside the ledger: the printed log may be read more widely than the ledger."""
    unit = "patients" if s["privacy_unit"] == "patient" else "images"
    shape = " x ".join(map(str, s["format"]["image_shape"]))
    private = s["published"]["class_counts_kind"] == "dp"
    head = f"owner '{s['owner_id']}' loaded {s['source']}: "
    if private:
        lines = [
            head + f"images of {shape}, {len(s['classes'])} classes, privacy unit: {s['privacy_unit']}; class counts "
            f"are published with DP ({s['published']['class_counts']}), so the true counts and any warning on "
            f"them are only in {path or SUMMARY_FILE}"
        ]
    else:
        lines = [
            head + f"{s['images']:,} images of {shape}, {len(s['classes'])} classes, privacy unit: "
            f"{s['privacy_unit']}" + (f" ({s['patients']:,} patients)" if s["patients"] is not None else "")
        ]
    for c in [] if private else s["classes"]:
        extra = f", {c['patients']} patients" if "patients" in c else ""
        published = "" if c["published_count"] == c["images"] else f" (published {c['published_count']})"
        lines.append(
            f"  {c['name']:<20} {c['images']:>7,} images{extra}{published}; at most "
            f"{c['records_per_draw_at_max_rate']:.3g} {unit} a draw"
        )
    lines.append(
        f"  ignored files: {s['ignored_files']:,}; skipped (unreadable): {s['skipped_files']:,}"
        + (f" ({', '.join(f'{r}: {n}' for r, n in s['skipped_by_reason'].items())})" if s["skipped_by_reason"] else "")
        + (f"; held out of every release: {s['held_out_images']:,}" if s["held_out_images"] else "")
    )
    for name, value in (s.get("load_report") or {}).items():  # e.g. a loader's ignored files by reason
        if name.endswith("by_reason") and isinstance(value, dict) and value:
            lines.append(f"  {name.replace('_', ' ')}: {', '.join(f'{k}: {v}' for k, v in value.items())}")
    p = s["published"]
    lines.append(
        f"  publishes: class counts ({p['class_counts_kind']}), image shape {p['image_shape']}, normalisation "
        f"{[round(v, 4) for v in p['normalization']]}, clip norm {p['clip_norm']}, budget epsilon "
        f"{p['epsilon_budget']} at delta {p['delta']:g} ({p['accountant'].upper()}), its limits"
    )
    lines += [f"  converted: {c}" for c in s["conversions"]]
    lines += [f"  WARNING: {w}" for w in s["warnings"] if not private or not w.startswith("too few")]
    return "\n".join(lines)


def summary_path(config: OwnerConfig) -> Path:
    return Path(config.ledger_path).parent / SUMMARY_FILE


def write_load_summary(config: OwnerConfig, data: PrivateData, info: OwnerInfo) -> dict:
    """Print the load summary and write it beside the ledger (atomically); returns it."""
    summary = build_summary(config, data, info)
    path = summary_path(config)
    print(format_summary(summary, path), flush=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)
    return summary

"""Numeric fingerprints of every method, the synthetic generator and the harness, per behaviour version.

Run keys contain each method's ``version``, the generator's ``version`` and ``HARNESS_VERSION``, so
that a behaviour change trains new runs instead of reusing old numbers. ``tests/test_versions.py``
recomputes these fingerprints and fails when the numbers moved while the version stayed the same.

One file holds them for every machine: the method fingerprints are computed in float64 (torch's default
dtype set to float64 for the computation, so every network, batch and loss is double). In float32 the
same steps differ between CPU kinds (AVX2, two AVX-512 CPUs) by far more than the tolerance, as their
kernels sum in other orders; in float64 those differences are about 1e-13, so one fingerprint holds on
any CPU kind, ARM included. They run on one thread: with two, A&D's pseudo-labels (an argmax over
near-tied classes) came out differently. The float32-only fast kernels (``methods/common/kernels.py``) do not run in
float64, so a fingerprint's version is the method's own. The generator and harness fingerprints are
integer counts and float32 sums that were identical on both kinds measured.

After a deliberate change: bump the version, then record the new fingerprints::

    .venv/bin/python tests/golden_numerics.py --update            # every entry whose version changed
    .venv/bin/python tests/golden_numerics.py --update --force NAME  # one entry, whatever its version
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "numerics.json"
PATCH, CUBE_PATCH, NUM_CLASSES = (16, 16, 16), (32, 32, 32), 4
CLASS_NAMES = ["background", "spleen", "right_kidney", "left_kidney"]
STEPS = 3


def method_fingerprint(name: str) -> dict[str, Any]:
    """Losses of three training steps on fixed batches and statistics of the prediction that follows,
    computed in float64 (see the module docstring)."""
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # A&D's first loss moved by 1e-5 between 1 and 2 threads (ties in its argmax)
    try:
        return _method_fingerprint(name)
    finally:
        torch.set_default_dtype(previous)
        torch.set_num_threads(threads)


def _method_fingerprint(name: str) -> dict[str, Any]:
    import dataclasses

    from methods import Batch, get_method
    cls = get_method(name)
    cube = "cube_grid" in {f.name for f in dataclasses.fields(cls.Config)}
    patch = CUBE_PATCH if cube else PATCH
    overrides: dict[str, Any] = {"cube_grid": (2, 1, 1), "location_hidden": 64} if cube else {}
    torch.manual_seed(0)
    method = cls(cls.Config(base_filters=4, **overrides), NUM_CLASSES, max_iterations=10, patch=patch,
                 class_names=CLASS_NAMES)
    labels = [np.random.default_rng(i).integers(0, NUM_CLASSES, (20, 20, 20)) for i in range(3)]
    method.observe_data(labels, iterations_per_epoch=5)
    losses = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        batch = Batch(torch.rand(2, 1, *patch, generator=g), torch.randint(0, NUM_CLASSES, (2, *patch), generator=g),
                      torch.rand(2, 1, *patch, generator=g))
        torch.manual_seed(100 + step)
        losses.append(float(method.train_step(batch, step)["loss"]))
    x = torch.rand(1, 1, *patch, generator=torch.Generator().manual_seed(42))
    logits = method.predict(x).double()
    if batch.image_l.dtype != torch.float64 or logits.dtype != torch.float64:
        raise RuntimeError(f"{name}: the fingerprint did not run in float64")
    return {"version": cls.version, "losses": losses, "logits_mean": float(logits.mean()),
            "logits_abs_mean": float(logits.abs().mean())}


def generator_fingerprint(dataset: str) -> dict[str, Any]:
    """Voxel count per class and mean HU of subject 0 at 24^3."""
    from benchmarks.data.sources import SYNTHETIC_GENERATORS
    generator = SYNTHETIC_GENERATORS[dataset]()
    image, label, spacing = generator.generate((24, 24, 24), 0)
    counts = np.bincount(label.ravel(), minlength=len(generator.class_names))
    return {"version": generator.version, "class_voxels": counts.tolist(), "image_mean": float(image.mean()),
            "spacing": [float(s) for s in spacing]}


def harness_fingerprint() -> dict[str, Any]:
    """The sampler's first batches (crop sums) and the metric summary of one fixed case."""
    from benchmarks import HARNESS_VERSION
    from benchmarks.data import Case
    from benchmarks.metrics import PROTOCOLS, evaluate_case
    from benchmarks.training import TwoStreamSampler
    rng = np.random.default_rng(0)
    cases = [Case(f"c{i}", rng.random((20, 22, 18), dtype=np.float32), rng.integers(0, 3, (20, 22, 18)).astype(np.uint8),
                  (1.0, 1.0, 1.0)) for i in range(5)]
    sampler = TwoStreamSampler(cases[:2], cases[2:], 2, 2, (16, 16, 16), seed=3)
    crops = []
    for _ in range(3):
        batch = sampler.next()
        crops.append([float(batch.image_l.sum()), float(batch.label_l.sum()), float(batch.image_u.sum())])
    gt = np.zeros((24, 24, 24), int)
    gt[4:14, 4:14, 4:14], gt[15:20, 15:20, 15:20] = 1, 2
    pred = np.roll(gt, 2, axis=0)
    pred[pred == 2] = 0
    dices, asds = evaluate_case(pred, gt, 3, PROTOCOLS["dhc"])
    return {"version": HARNESS_VERSION, "sampler_crop_sums": crops, "dice": dices.tolist(), "asd": asds.tolist()}


def entries() -> dict[str, Any]:
    """Every fingerprint name -> a function computing it."""
    from methods import list_methods
    out: dict[str, Any] = {f"method:{m}": (lambda m=m: method_fingerprint(m)) for m in list_methods()}
    out.update({f"generator:{d}": (lambda d=d: generator_fingerprint(d)) for d in ("amos", "synapse")})
    out["harness"] = harness_fingerprint
    return out


def load() -> dict[str, Any]:
    """The recorded fingerprints (empty when none were recorded)."""
    return json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.is_file() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="record fingerprints of new or re-versioned entries")
    parser.add_argument("--force", nargs="*", default=[], help="record these entries whatever their version")
    args = parser.parse_args()
    golden, changed = load(), []
    for name, compute in entries().items():
        value = compute()
        stored = golden.get(name)
        if stored is None or stored["version"] != value["version"] or name in args.force:
            changed.append(name)
            golden[name] = value
    if args.update and changed:
        GOLDEN_FILE.parent.mkdir(exist_ok=True)
        GOLDEN_FILE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(("recorded" if args.update else "would record (pass --update)") + f" in {GOLDEN_FILE.name}: "
          + (", ".join(changed) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

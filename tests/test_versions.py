"""Behaviour versions: the numbers of a method, the synthetic generator or the harness may change only
together with their version (which is part of every run key), so old runs are never reused for new
behaviour. Fingerprints live in tests/golden/numerics.json, one file for every CPU kind (computed in
float64; tests/golden_numerics.py explains why and how to update them)."""
from __future__ import annotations

import math

import pytest

from golden_numerics import GOLDEN_FILE, entries, load

GOLDEN = load()
ENTRIES = entries()
REL = 2e-3  # far above run-to-run noise on one machine type, far below what a behaviour change moves


def _close(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=REL, abs_tol=1e-6)
    return a == b


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_numbers_change_only_with_the_version(name: str) -> None:
    now, stored = ENTRIES[name](), GOLDEN.get(name)
    if stored is None or stored["version"] != now["version"]:
        pytest.fail(f"{name}: version {now['version']} has no fingerprint (recorded: "
                    f"{stored['version'] if stored else 'none'}); run `.venv/bin/python tests/golden_numerics.py "
                    f"--update` and commit tests/golden/{GOLDEN_FILE.name}")
    moved = {k: (stored[k], now[k]) for k in now if k != "version" and not _close(stored.get(k), now[k])}
    assert not moved, (f"{name}: the numbers changed but its version is still {now['version']} -- bump the version "
                       f"(method class, generator class or benchmarks.HARNESS_VERSION) so that old runs are not "
                       f"reused, then update the fingerprint. Changed (recorded, now): {moved}")


def test_the_guard_notices_a_changed_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing what a method computes without a version bump moves its fingerprint beyond tolerance."""
    from methods import get_method
    cls = get_method("supervised")
    original = cls.train_step

    def scaled(self, batch, step):  # type: ignore[no-untyped-def]
        for group in self.optimizers[0].param_groups:
            group["lr"] *= 1.5  # e.g. a changed default learning rate
        return original(self, batch, step)

    monkeypatch.setattr(cls, "train_step", scaled)
    now = ENTRIES["method:supervised"]()
    assert now["version"] == GOLDEN["method:supervised"]["version"]
    assert not _close(GOLDEN["method:supervised"]["logits_abs_mean"], now["logits_abs_mean"]) or \
        not _close(GOLDEN["method:supervised"]["losses"], now["losses"])


def test_every_registered_method_has_a_fingerprint() -> None:
    """A method registered without a recorded fingerprint fails here (and in the parametrised test)."""
    from methods import list_methods
    missing = sorted(m for m in list_methods() if f"method:{m}" not in GOLDEN)
    assert not missing, f"no fingerprint in tests/golden/{GOLDEN_FILE.name} for {missing}"


def test_fingerprints_run_in_float64_and_restore_the_default_dtype() -> None:
    """The fingerprint is computed in double precision, and float32 stays the default afterwards."""
    import torch
    before = torch.get_default_dtype()
    ENTRIES["method:supervised"]()
    assert torch.get_default_dtype() == before == torch.float32

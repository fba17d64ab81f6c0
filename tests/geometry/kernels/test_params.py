"""posctx.geometry.kernels.params: validated settings and the names of the per-layer results."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from posctx.geometry.kernels.params import SCALAR_NAMES, GeometryParams


def test_defaults_and_their_json_record() -> None:
    params = GeometryParams()
    assert json.loads(params.to_json()) == {
        "max_contexts": 2048,
        "n_low_frequencies": 8,
        "n_pcs": 20,
        "n_random": 8,
        "screenot_k": None,
        "seed": 0,
        "subspace_dim": 10,
    }
    assert params.to_json() == json.dumps(json.loads(params.to_json()), sort_keys=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1  # type: ignore[misc]  # frozen on purpose


@pytest.mark.parametrize(
    "field", ["n_low_frequencies", "n_pcs", "subspace_dim", "n_random", "max_contexts"]
)
@pytest.mark.parametrize("value", [0, -3, 2.0, "4"])
def test_counts_must_be_positive_integers(field: str, value: object) -> None:
    with pytest.raises(ValueError) as info:
        GeometryParams(**{field: value})  # type: ignore[arg-type]
    assert str(info.value) == f"{field} must be >= 1, got {value!r}"


def test_numpy_integers_and_a_zero_screenot_bound_are_fine() -> None:
    assert GeometryParams(n_pcs=np.int64(3), screenot_k=0).n_pcs == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="screenot_k must be >= 0 or None, got -1"):
        GeometryParams(screenot_k=-1)


def test_scalar_names_are_unique_and_grouped_by_measurement() -> None:
    assert len(SCALAR_NAMES) == len(set(SCALAR_NAMES)) == 26
    prefixes = {name.split("_")[0] for name in SCALAR_NAMES}
    assert prefixes == {"pos", "smooth", "spiral", "ctx", "orth"}

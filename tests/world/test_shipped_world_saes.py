"""The SAEs shipped for the small world: every family × width loads through SAE-Lens' own classes, is stored in fp16,
and on fresh rows of that world (drawn by the world's own generator, never shipped) reconstructs and recovers true
features far better than a trivial baseline.

Measured on the shipped weights (4 096 fresh rows): NMSE 0.33 (topk ×1, ×2) to 0.52 (standard), L0 7.1 (gated) to
12.3, recovered 7 % (matryoshka ×1) to 39 % (gated, standard) of the true features; predicting the mean row gives
NMSE 0.98 and a row-shuffled decoder 1.08–1.50. The bounds below sit between, with margin on both sides.
"""

import tomllib
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from safetensors import safe_open
from scipy.optimize import linear_sum_assignment

from saelens_amort.world import PRESETS, draw_chunk, draw_structure
from saelens_amort.world.saes import FAMILIES, WIDTHS, shipped_sae_dirs

CFG = PRESETS["small"]
ROWS = 4096
FRESH_CHUNK = 1000
"""A chunk index the built world never draws (it has n_tokens / shard_tokens = 13 chunks): rows no SAE saw."""


@pytest.fixture(scope="module")
def world_rows():
    structure = draw_structure(CFG)
    return structure.atoms, draw_chunk(CFG, structure, FRESH_CHUNK, ROWS).x


def _nmse(sae, x):
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    return float((x - x_hat).double().pow(2).sum() / x.double().pow(2).sum()), float((z > 0).sum(-1).float().mean())


def _recovered(true_atoms, sae):
    """Fraction of true features whose Hungarian-matched decoder row has cosine ≥ 0.9 (scipy on −cos)."""
    dec = sae.W_dec.detach().double()
    cos = torch.nn.functional.normalize(true_atoms.double(), dim=1) @ torch.nn.functional.normalize(dec, dim=1).T
    rows, cols = linear_sum_assignment(-cos.numpy())
    return float((cos[rows, cols] >= 0.9).double().mean())


def test_every_family_and_width_ships_inside_the_package():
    assert set(shipped_sae_dirs()) == {f"world/{fam}-x{w}" for fam in FAMILIES for w in WIDTHS}
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "weights/**/*" in pyproject["tool"]["setuptools"]["package-data"]["saelens_amort.world"]


@pytest.mark.parametrize("name", sorted(shipped_sae_dirs()))
def test_shipped_sae_loads_in_fp16_and_beats_a_trivial_baseline(name, world_rows):
    path = shipped_sae_dirs()[name]
    with safe_open(str(path / "sae_weights.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    sae = SAE.load_from_disk(str(path), dtype="float32")
    width = int(name.rsplit("-x", 1)[1])
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (CFG.d, CFG.n_features * width)
    atoms, x = world_rows
    nmse, l0 = _nmse(sae, x)
    mean_only = float((x - x.mean(0)).double().pow(2).sum() / x.double().pow(2).sum())
    assert mean_only > 0.9
    assert nmse < 0.65, f"{name}: NMSE {nmse:.3f} on fresh world rows"
    assert 4 <= l0 <= 40, f"{name}: L0 {l0:.1f}, the world's is {CFG.mean_l0:g}"
    assert _recovered(atoms, sae) > 0.03


def test_shipped_world_saes_load_by_their_short_name():
    from saelens_amort import SaeAmortError, load_sae

    name, path = next(iter(shipped_sae_dirs().items()))
    assert name.startswith("world/")
    by_name, by_path = load_sae(name), load_sae(path)
    assert torch.equal(by_name.W_dec, by_path.W_dec) and by_name.cfg.d_sae == by_path.cfg.d_sae
    with pytest.raises(SaeAmortError, match="no shipped world SAE 'world/nope'; shipped: world/"):
        load_sae("world/nope")

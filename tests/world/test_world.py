"""The ground-truth world: its statistics are the ones asked for, it is deterministic, and it stores as data."""

import json

import pytest
import torch
from saelens_amort.activations import ActivationStore
from saelens_amort.errors import SaeAmortError
from saelens_amort.world import World, WorldConfig, build_world, draw_chunk, draw_structure

CFG = WorldConfig(d=32, n_features=256, n_tokens=6000, mean_l0=6.0, n_parents=8, children=3, child_prob=0.4,
                  n_groups=8, group_size=3, group_cos=(0.7, 0.9), noise=0.05, shard_tokens=2500, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(CFG, tmp_path_factory.mktemp("w") / "world")


def test_structure_has_the_requested_statistics(world):
    st = world.structure
    assert torch.allclose(st.atoms.norm(dim=1), torch.ones(CFG.n_features), atol=1e-5)
    for g in range(CFG.n_groups):
        a = st.atoms[st.group == g]
        cos = (a @ a.T)[~torch.eye(CFG.group_size, dtype=torch.bool)]
        assert 0.7 - 1e-4 <= float(cos.min()) and float(cos.max()) <= 0.9 + 1e-4
        assert float(cos.max() - cos.min()) < 1e-4  # one ρ per group
    kids = st.parent >= 0
    assert int(kids.sum()) == CFG.n_parents * CFG.children
    assert torch.allclose(st.probs[kids], st.probs[st.parent[kids]] * CFG.child_prob)
    assert float(st.probs.sum()) == pytest.approx(CFG.mean_l0, rel=1e-3)
    roots = st.probs[~kids].sort(descending=True).values
    assert float(roots[:10].mean()) > 10 * float(roots[-50:].mean())  # a few common features, a long tail


def test_codes_follow_the_hierarchy_and_x_is_their_sum_plus_noise(world):
    s = world.truth()
    x = world.store.load().acts
    assert s.shape == (CFG.n_tokens, CFG.n_features) and bool((s >= 0).all())
    kids = torch.nonzero(world.structure.parent >= 0).flatten()
    on = s > 0
    assert not bool((on[:, kids] & ~on[:, world.structure.parent[kids]]).any())  # never a child without its parent
    assert float(on.sum(1).float().mean()) == pytest.approx(CFG.mean_l0, rel=0.06)
    resid = x - s @ world.structure.atoms
    assert float(resid.std()) == pytest.approx(CFG.noise, rel=0.05)
    freq = on.float().mean(0)
    assert torch.corrcoef(torch.stack([freq, world.structure.probs]))[0, 1] > 0.95


def test_batches_of_truth_align_with_the_store_and_chunks_are_deterministic(world):
    x_batches = [b.acts for b in world.store.iter_batches(1000)]
    s_batches = list(world.iter_truth(1000))
    assert [len(b) for b in x_batches] == [len(b) for b in s_batches]
    st = world.structure
    assert all(float((x - s @ st.atoms).std()) < 2 * CFG.noise for x, s in zip(x_batches, s_batches))
    again = draw_chunk(CFG, draw_structure(CFG), 1, CFG.shard_tokens)
    assert torch.equal(again.codes, world.truth()[CFG.shard_tokens: 2 * CFG.shard_tokens])
    assert isinstance(ActivationStore.open(world.path), ActivationStore)  # an ordinary store for every command


def test_a_complete_world_is_reused_and_another_refused(world, tmp_path):
    assert build_world(CFG, world.path).path == world.path
    with pytest.raises(SaeAmortError, match="something else"):
        build_world(WorldConfig(d=32, n_features=256, n_tokens=100, n_parents=0, n_groups=0, mean_l0=2.0),
                    world.path)


def test_a_store_without_truth_is_not_a_world(world, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in world.path.iterdir():
        if not f.name.startswith(("world", "truth")):
            (plain / f.name).write_bytes(f.read_bytes())
    ActivationStore.open(plain)
    with pytest.raises(SaeAmortError, match="no ground truth"):
        World.open(plain)


@pytest.mark.parametrize("bad, match", [
    ({"mean_l0": 300.0}, "more active features than exist"),
    ({"noise": -0.1}, "noise"),
    ({"n_parents": 100, "children": 3}, "need"),
    ({"group_cos": (0.9, 0.7)}, "group_cos"),
    ({"n_tokens": 0}, "n_tokens"),
])
def test_impossible_parameters_are_refused(bad, match):
    base = {"d": 32, "n_features": 256, "n_parents": 8, "n_groups": 8, "mean_l0": 6.0}
    with pytest.raises(SaeAmortError, match=match):
        WorldConfig(**{**base, **bad})


def test_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import saelens_amort.world.store as ws

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ws, "draw_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        build_world(CFG, tmp_path / "w")
    assert list(tmp_path.iterdir()) == []
    json.dumps(CFG.as_json())

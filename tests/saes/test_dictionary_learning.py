"""dictionary_learning → SAE-Lens conversion equals the real dictionary_learning classes' encode/decode."""

import json

import pytest
import torch
from helpers import (
    DICTIONARY_LEARNING_CLASSES,
    build_random_dictionary_learning_ae,
    import_dictionary_learning,
    write_dictionary_learning_dir,
)
from sae_lens import GatedSAE, JumpReLUSAE, StandardSAE, TopKSAE

from saelens_amort.errors import SaeAmortError
from saelens_amort.saes import is_dictionary_learning_dir, load_dictionary_learning_sae, load_sae

EXPECTED_CLASS = {
    "AutoEncoder": StandardSAE,
    "AutoEncoderTopK": TopKSAE,
    "BatchTopKSAE": JumpReLUSAE,
    "MatryoshkaBatchTopKSAE": JumpReLUSAE,
    "GatedAutoEncoder": GatedSAE,
    "JumpReluAutoEncoder": JumpReLUSAE,
}
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def reference():
    classes = import_dictionary_learning()
    if classes is None:
        pytest.skip("reference missing: pip install --no-deps dictionary-learning==0.1.0")
    return classes


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 32, generator=gen) * 1.5 + 0.3
    codes = torch.relu(torch.randn(64, 128, generator=gen)) * (torch.rand(64, 128, generator=gen) < 0.1)
    return x, codes


@pytest.mark.parametrize("dict_class", sorted(DICTIONARY_LEARNING_CLASSES))
def test_converted_sae_matches_reference(reference, dict_class, tmp_path):
    ae = build_random_dictionary_learning_ae(dict_class, seed=3)
    write_dictionary_learning_dir(tmp_path, ae, dict_class)
    assert is_dictionary_learning_dir(tmp_path)
    sae = load_dictionary_learning_sae(tmp_path)
    assert type(sae) is EXPECTED_CLASS[dict_class]
    x, codes = _inputs()
    with torch.no_grad():
        want = ae.encode(x)  # each class's own inference path (TopK per token, BatchTopK/Matryoshka thresholded)
        got = sae.encode(x)
        assert (want > 0).float().mean() > 0.01, "reference codes are (nearly) all zero: the test could not fail"
        assert (want > 0).float().mean() < 0.9, "reference codes are dense: thresholds/top-k not exercised"
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(sae.decode(codes), ae.decode(codes), **TOL)
        torch.testing.assert_close(sae.decode(got), ae.decode(want), **TOL)
    if dict_class == "AutoEncoderTopK":
        assert sae.cfg.k == 8 and ((got > 0).sum(-1) <= 8).all()


def test_jumprelu_apply_b_dec_flag_from_config(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("JumpReluAutoEncoder", seed=4)
    x, _ = _inputs(2)
    write_dictionary_learning_dir(tmp_path / "off", ae, "JumpReluAutoEncoder")
    assert load_dictionary_learning_sae(tmp_path / "off").cfg.apply_b_dec_to_input is False
    ae.apply_b_dec_to_input = True
    write_dictionary_learning_dir(
        tmp_path / "on", ae, "JumpReluAutoEncoder", trainer_extra={"apply_b_dec_to_input": True}
    )
    sae = load_dictionary_learning_sae(tmp_path / "on")
    assert sae.cfg.apply_b_dec_to_input is True
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), ae.encode(x), **TOL)


def test_global_threshold_is_broadcast(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("BatchTopKSAE", seed=5)
    write_dictionary_learning_dir(tmp_path, ae, "BatchTopKSAE")
    sae = load_dictionary_learning_sae(tmp_path)
    assert sae.threshold.shape == (128,)
    assert torch.equal(sae.threshold, ae.threshold.expand(128))


def test_config_becomes_metadata(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("MatryoshkaBatchTopKSAE")
    write_dictionary_learning_dir(tmp_path, ae, "MatryoshkaBatchTopKSAE", layer=3, ctx_len=1024)
    sae = load_dictionary_learning_sae(tmp_path, dtype=torch.float64)
    meta = sae.cfg.metadata
    assert meta.hook_name == "blocks.3.hook_resid_post"
    assert meta.model_name == "pythia-160m-deduped"
    assert meta.context_size == 1024 and meta.prepend_bos is True
    assert meta.matryoshka_group_sizes == [32, 32, 64]
    assert sae.W_enc.dtype == torch.float64 and sae.cfg.dtype == "float64"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (32, 128)


def test_round_trip_through_sae_lens_format(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("GatedAutoEncoder", seed=6)
    write_dictionary_learning_dir(tmp_path / "dl", ae, "GatedAutoEncoder")
    sae = load_sae(str(tmp_path / "dl"))
    sae.save_model(tmp_path / "sl")
    again = load_sae(tmp_path / "sl")
    assert type(again) is GatedSAE
    assert sae.state_dict().keys() == again.state_dict().keys()
    for key, value in sae.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert again.cfg.metadata.hook_name == "blocks.8.hook_resid_post"
    x, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(sae.encode(x), again.encode(x))


def test_missing_files_raise(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("AutoEncoder")
    write_dictionary_learning_dir(tmp_path, ae, "AutoEncoder")
    (tmp_path / "ae.pt").unlink()
    assert not is_dictionary_learning_dir(tmp_path)
    with pytest.raises(SaeAmortError, match="ae.pt"):
        load_dictionary_learning_sae(tmp_path)
    with pytest.raises(SaeAmortError, match="not a directory"):
        load_dictionary_learning_sae(tmp_path / "nope")


def test_unknown_dict_class_lists_supported(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("AutoEncoder")
    write_dictionary_learning_dir(tmp_path, ae, "AutoEncoder", trainer_extra={"dict_class": "AutoEncoderNew"})
    with pytest.raises(SaeAmortError, match="AutoEncoderNew.*supported.*BatchTopKSAE"):
        load_dictionary_learning_sae(tmp_path)


def test_config_and_weights_disagree(reference, tmp_path):
    ae = build_random_dictionary_learning_ae("JumpReluAutoEncoder")
    write_dictionary_learning_dir(
        tmp_path / "keys", ae, "JumpReluAutoEncoder", trainer_extra={"dict_class": "AutoEncoder"}
    )
    with pytest.raises(SaeAmortError, match="lacks"):
        load_dictionary_learning_sae(tmp_path / "keys")
    write_dictionary_learning_dir(tmp_path / "dims", ae, "JumpReluAutoEncoder", trainer_extra={"dict_size": 64})
    with pytest.raises(SaeAmortError, match="dict_size=64"):
        load_dictionary_learning_sae(tmp_path / "dims")
    topk = build_random_dictionary_learning_ae("AutoEncoderTopK")
    write_dictionary_learning_dir(tmp_path / "k", topk, "AutoEncoderTopK", trainer_extra={"k": 3})
    with pytest.raises(SaeAmortError, match="k=3"):
        load_dictionary_learning_sae(tmp_path / "k")
    (tmp_path / "k" / "config.json").write_text(json.dumps({"buffer": {}}))
    with pytest.raises(SaeAmortError, match="trainer"):
        load_dictionary_learning_sae(tmp_path / "k")


def test_weights_that_do_not_fit_and_k_past_the_dictionary_are_user_errors(reference, tmp_path):
    """A bias cut short fails in load_state_dict, after the W_enc/W_dec shape check: one error, not a traceback;
    a k larger than dict_size would load and fail in the first encode."""
    ae = build_random_dictionary_learning_ae("AutoEncoder")
    write_dictionary_learning_dir(tmp_path / "bias", ae, "AutoEncoder")
    state = torch.load(tmp_path / "bias" / "ae.pt")
    state["bias"] = state["bias"][:16]
    torch.save(state, tmp_path / "bias" / "ae.pt")
    with pytest.raises(SaeAmortError, match=r"ae\.pt does not fit its config\.json .*b_dec"):
        load_dictionary_learning_sae(tmp_path / "bias")
    topk = build_random_dictionary_learning_ae("AutoEncoderTopK")
    write_dictionary_learning_dir(tmp_path / "k", topk, "AutoEncoderTopK", trainer_extra={"k": 1000})
    state = torch.load(tmp_path / "k" / "ae.pt")
    state["k"] = torch.tensor(1000)
    torch.save(state, tmp_path / "k" / "ae.pt")
    with pytest.raises(SaeAmortError, match="k=1000 but dict_size=128"):
        load_dictionary_learning_sae(tmp_path / "k")

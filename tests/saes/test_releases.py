"""Per-layer SAE ids of an SAE-Lens release, read from the release directory shipped in sae-lens (no download)."""

import pytest

from saelens_amort import SaeAmortError
from saelens_amort.layers import neuronpedia_layer, parse_layers
from saelens_amort.saes.releases import release_layer_ids


def test_gpt2_small_res_jb_layers_resolve_to_their_real_ids():
    got = dict(release_layer_ids("gpt2-small-res-jb", parse_layers("0-11")))
    assert got == {layer: f"gpt2-small-res-jb/blocks.{layer}.hook_resid_pre" for layer in range(12)}
    # Neuronpedia's 12-res-jb is the last block's output
    assert release_layer_ids("gpt2-small-res-jb", (12,)) == ((12, "gpt2-small-res-jb/blocks.11.hook_resid_post"),)


def test_release_without_neuronpedia_ids_reads_the_layer_from_the_id():
    assert release_layer_ids("pythia-70m-deduped-res-sm", (3,)) == ((3, "pythia-70m-deduped-res-sm/"
                                                                        "blocks.3.hook_resid_post"),)


def test_ambiguous_missing_and_unknown():
    with pytest.raises(SaeAmortError, match=r"has 2 SAEs for layer 3 .*layer_3/width_16k/canonical.*--sae 3="):
        release_layer_ids("gemma-scope-2b-pt-res-canonical", (3,))
    with pytest.raises(SaeAmortError, match=r"no SAE for layer 40; its layers are \[0, 1, .*12\]"):
        release_layer_ids("gpt2-small-res-jb", (40,))
    with pytest.raises(SaeAmortError, match=r"unknown SAE-Lens release 'gpt2-small-res-jbb' \(did you mean"):
        release_layer_ids("gpt2-small-res-jbb", (1,))


def test_parse_layers_and_neuronpedia_ids():
    assert parse_layers("0-3") == (0, 1, 2, 3) and parse_layers("6, 2,4-5,4") == (2, 4, 5, 6)
    for bad in ("", "3-1", "a-b", "1;2"):
        with pytest.raises(SaeAmortError, match="--layers takes"):
            parse_layers(bad)
    assert neuronpedia_layer("8-res-jb") == 8 and neuronpedia_layer("gpt2-small/10-res_post_32k-oai") == 10
    assert neuronpedia_layer("res-jb") is None

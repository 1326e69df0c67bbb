"""Builders shared by the tests (append new helpers; do not reorder)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

# --- dictionary_learning reference (saes) -------------------------------------------------------------------------

DICTIONARY_LEARNING_CLASSES = {
    "AutoEncoder": "dictionary_learning.dictionary",
    "GatedAutoEncoder": "dictionary_learning.dictionary",
    "JumpReluAutoEncoder": "dictionary_learning.dictionary",
    "AutoEncoderTopK": "dictionary_learning.trainers.top_k",
    "BatchTopKSAE": "dictionary_learning.trainers.batch_top_k",
    "MatryoshkaBatchTopKSAE": "dictionary_learning.trainers.matryoshka_batch_top_k",
}
"""dict_class name → module of the real dictionary_learning package.

CI installs it with `pip install --no-deps dictionary-learning==0.1.0`."""


def _stub_package(name: str, path: Path) -> None:
    """Register `name` as a bare package at `path`, so its submodules import without running its `__init__`."""
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = [str(path)]  # type: ignore[attr-defined]
    module.__package__ = name
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(path)]
    sys.modules[name] = module


def import_dictionary_learning() -> dict[str, type] | None:
    """The real dictionary_learning dictionary classes by dict_class name, or None when the package is absent.

    Its package `__init__` imports nnsight (not installed); the dictionary modules do not need it, so the two package
    levels are registered as bare namespace modules and only the needed submodules are imported.
    """
    loaded = sys.modules.get("dictionary_learning")
    spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec("dictionary_learning")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    _stub_package("dictionary_learning", root)
    _stub_package("dictionary_learning.trainers", root / "trainers")
    return {
        name: getattr(importlib.import_module(module), name) for name, module in DICTIONARY_LEARNING_CLASSES.items()
    }


DICTIONARY_LEARNING_TRAINERS = {
    "AutoEncoder": "StandardTrainerAprilUpdate",
    "AutoEncoderTopK": "TopKTrainer",
    "BatchTopKSAE": "BatchTopKTrainer",
    "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer",
    "GatedAutoEncoder": "GatedSAETrainer",
    "JumpReluAutoEncoder": "JumpReluTrainer",
}
"""A trainer class that writes each dict_class (the SAEBench suites' names)."""


def build_random_dictionary_learning_ae(
    dict_class: str, *, activation_dim: int = 32, dict_size: int = 128, k: int = 8, seed: int = 0
):
    """The real dictionary_learning module `dict_class` with every parameter and buffer randomised.

    Decoder atoms get non-unit norms, b_dec / biases / r_mag are non-trivial, thresholds are positive and sit
    inside the pre-activation range, so that conversions which drop or misplace any term fail.
    """
    import torch

    classes = import_dictionary_learning()
    if classes is None:
        raise ImportError("dictionary_learning is not installed: pip install --no-deps dictionary-learning==0.1.0")
    cls = classes[dict_class]
    gen = torch.Generator().manual_seed(seed)
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        ae = cls(activation_dim, dict_size, k)
    elif dict_class == "MatryoshkaBatchTopKSAE":
        quarter = dict_size // 4
        ae = cls(activation_dim, dict_size, k, [quarter, quarter, dict_size - 2 * quarter])
    else:
        ae = cls(activation_dim, dict_size)
    with torch.no_grad():
        for name, param in ae.named_parameters():
            scale = 0.3 if "weight" in name or name.startswith("W_") else 0.5
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
            if name == "threshold":
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
        if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
            ae.threshold.fill_(0.5 + float(torch.rand((), generator=gen)))
    return ae


def write_dictionary_learning_dir(
    path: Path,
    ae,
    dict_class: str,
    *,
    layer: int = 8,
    lm_name: str = "EleutherAI/pythia-160m-deduped",
    ctx_len: int = 128,
    trainer_extra: dict | None = None,
) -> Path:
    """Save `ae` as dictionary_learning's training loop does: `ae.pt` (state dict) + `config.json` (trainer, buffer)."""
    import json

    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, path / "ae.pt")
    trainer = {
        "trainer_class": DICTIONARY_LEARNING_TRAINERS[dict_class],
        "dict_class": dict_class,
        "lr": 3e-4,
        "steps": 244140,
        "seed": 0,
        "activation_dim": ae.activation_dim,
        "dict_size": ae.dict_size,
        "device": "cuda:0",
        "layer": layer,
        "lm_name": lm_name,
        "wandb_name": f"{DICTIONARY_LEARNING_TRAINERS[dict_class]}-{lm_name}-resid_post_layer_{layer}",
        "submodule_name": f"resid_post_layer_{layer}",
    }
    if hasattr(ae, "k"):
        trainer["k"] = int(ae.k.item())
    if hasattr(ae, "group_sizes"):
        trainer["group_sizes"] = [int(g) for g in ae.group_sizes.tolist()]
    trainer.update(trainer_extra or {})
    buffer = {
        "d_submodule": ae.activation_dim,
        "io": "out",
        "n_ctxs": 2000,
        "ctx_len": ctx_len,
        "refresh_batch_size": 24,
        "out_batch_size": 2048,
        "device": "cuda:0",
    }
    (path / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": buffer}, indent=4))
    return path


# --- tiny TransformerLens model (activations) ---------------------------------------------------------------------


def tiny_tokenizer(folder: Path):
    """The toy world's word-level tokenizer (BOS/EOS `<|endoftext|>` = 0, `<pad>` = 1, `<unk>` = 2), saved to
    `folder` and reloaded from there (the form HookedTransformer accepts)."""
    from saelens_amort.toy.corpus import generate_corpus
    from saelens_amort.toy.tokenizer import train_tokenizer

    return train_tokenizer([d.text for d in generate_corpus(50, seed=0)], Path(folder))


def tiny_model(tokenizer, *, n_ctx: int = 64, seed: int = 0):
    """A random 2-layer GPT-NeoX-shaped (rotary, parallel attn/MLP) HookedTransformer over `tokenizer`."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=n_ctx, d_vocab=len(tokenizer), act_fn="gelu",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=8, parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM", seed=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HookedTransformer's deprecation notice
        return HookedTransformer(cfg, tokenizer=tokenizer).eval()


# --- inference: random dictionaries, toy activations -----------------------------------------------------------------


def random_dictionary(d_in: int = 64, d_sae: int = 256, *, seed: int = 0, dtype=None, unit: bool = False):
    """A Dictionary over a random Gaussian decoder (non-unit atom norms unless `unit`) with a random bias."""
    import torch

    from saelens_amort.saes.dictionary import Dictionary

    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True) if unit else D * (0.5 + torch.rand(d_sae, 1, generator=gen, dtype=torch.float64))
    bias = 0.1 * torch.randn(d_in, generator=gen, dtype=torch.float64)
    dtype = dtype or torch.float32
    return Dictionary.from_matrix(D.to(dtype), bias.to(dtype))


def sparse_signals(dictionary, n: int = 16, *, l0: int = 8, noise: float = 0.05, seed: int = 0):
    """Raw activations x = z D + b + noise for non-negative z with `l0` active atoms per row."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    d_sae, dtype = dictionary.d_sae, dictionary.atoms.dtype
    idx = torch.rand(n, d_sae, generator=gen).argsort(dim=1)[:, :l0]
    u = torch.zeros(n, d_sae, dtype=dtype).scatter_(1, idx, (0.5 + torch.rand(n, l0, generator=gen)).to(dtype))
    return u @ dictionary.atoms + dictionary.bias + noise * torch.randn(n, dictionary.d_in, generator=gen).to(dtype)


def sae_dictionary(sae):
    """The dictionary view of an SAE-Lens SAE (`Dictionary.of` when available; otherwise W_dec/b_dec, exact for the
    toy SAEs, which decode as z @ W_dec + b_dec without input normalisation)."""
    from saelens_amort.saes.dictionary import Dictionary

    if hasattr(Dictionary, "of"):
        return Dictionary.of(sae)
    dictionary = Dictionary.from_matrix(sae.W_dec.detach(), sae.b_dec.detach())
    dictionary.sae = sae
    return dictionary


def batch_topk_training_sae():
    """A batch-dependent encoder: SAE-Lens' training-form BatchTopK (top k·N over the whole batch) with the toy
    batchtopk SAE's weights."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    import saelens_amort

    shipped = saelens_amort.load_sae("toy/batchtopk")
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=shipped.cfg.d_in, d_sae=shipped.cfg.d_sae, k=8,
                                                          metadata=shipped.cfg.metadata))
    sae.load_state_dict({k: v for k, v in shipped.state_dict().items() if k != "threshold"}, strict=False)
    return sae.eval()


_TOY_ACTS: dict = {}


def toy_activations(hook_name: str = "blocks.2.hook_resid_post", *, n_docs: int = 24, ctx: int = 64, seed: int = 1):
    """Activations [rows, d_model] of the shipped toy model at `hook_name` on generated toy text (cached per process)."""
    key = (hook_name, n_docs, ctx, seed)
    if key not in _TOY_ACTS:
        import torch

        import saelens_amort
        from saelens_amort.toy.corpus import generate_corpus

        model = saelens_amort.load_model("toy")
        tokens = model.to_tokens([d.text for d in generate_corpus(n_docs, seed=seed)], truncate=True)[:, :ctx]
        layer = int(hook_name.split(".")[1])
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=layer + 1)
        _TOY_ACTS[key] = cache[hook_name].reshape(-1, model.cfg.d_model).clone()
    return _TOY_ACTS[key]


def torch_threads(n: int):
    """Context manager: run torch on `n` intra-op threads, restoring the previous count (small solves on a busy
    machine spend most of their time in OpenMP barriers when multi-threaded)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def _scope():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    return _scope()


# --- headless Chromium: render an HTML report for real and read back what it drew -----------------------------------

_PROBE_HEAD = """<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message))});
</script>"""
_PROBE_TAIL = """<script>window.addEventListener('load',function(){setTimeout(async function(){
var plots=[].slice.call(document.querySelectorAll('.js-plotly-plot'));
var out=plots.map(function(p){return {id:p.id,traces:(p.data||[]).length,
svg:p.querySelectorAll('svg.main-svg').length,
points:(p.calcdata||[]).reduce(function(n,c){return n+(c?c.length:0)},0),
menus:p.querySelectorAll('.updatemenu-container').length,choices:[]}});
function text(p,sel){var e=p.querySelector(sel);return e?e.textContent:null}
for(var i=0;i<plots.length;i++){var p=plots[i],menus=(p.layout||{}).updatemenus||[];
for(var m=0;m<menus.length;m++){var buttons=menus[m].buttons||[];
for(var b=0;b<buttons.length;b++){var a=buttons[b].args||[];
try{await Plotly.update(p,a[0]||{},a[1]||{})}catch(e){window.__errors.push(String(e))}
out[i].choices.push({label:buttons[b].label,title:text(p,'.gtitle'),ytitle:text(p,'.ytitle'),
visible:(p.data||[]).filter(function(t){return t.visible!==false}).length})}}}
document.body.setAttribute('data-probe',JSON.stringify({errors:window.__errors,plots:out}));},500)});</script>"""
"""Injected before </body>: after load, each plot's traces, drawn SVG, points and menus; then every dropdown choice
applied as a click applies it (Plotly.update with the button's args), recording the drawn title and y-axis title."""


def chromium_probe(html_path, tmp_dir) -> dict:
    """Open `html_path` in headless Chromium with an error/plot probe injected; returns {errors, plots}."""
    import json
    import re
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    text = Path(html_path).read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_TAIL + "</body>", 1)
    probe_file = Path(tmp_dir) / "probe.html"
    probe_file.write_text(text, encoding="utf-8")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={Path(tmp_dir) / 'chrome-profile'}", "--virtual-time-budget=15000",
           "--dump-dom", probe_file.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert match, f"the probe did not run; chromium said: {proc.stderr[-2000:]}"
    import html as html_lib

    return json.loads(html_lib.unescape(match.group(1)))


# --- metrics: the toy model, cached -----------------------------------------------------------------------------------

_TOY_MODEL: dict = {}


def toy_model():
    """The shipped toy HookedTransformer, loaded once per process (callers must not modify it or leave hooks on it)."""
    if "model" not in _TOY_MODEL:
        import saelens_amort

        _TOY_MODEL["model"] = saelens_amort.load_model("toy")
    return _TOY_MODEL["model"]


def toy_tokens(n_rows: int = 8, ctx: int = 48, *, seed: int = 2):
    """Tokens [n_rows, ctx] of generated toy text packed into rows (BOS first, documents joined by EOS), no padding."""
    import torch

    from saelens_amort.toy.corpus import generate_corpus

    tokenizer = toy_model().tokenizer
    stream: list[int] = []
    for doc in generate_corpus(4 * n_rows, seed=seed):
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= n_rows * (ctx - 1):
            break
    body = torch.tensor(stream[: n_rows * (ctx - 1)], dtype=torch.long).reshape(n_rows, ctx - 1)
    return torch.cat([torch.full((n_rows, 1), tokenizer.bos_token_id, dtype=torch.long), body], dim=1)


# --- the CLI in a subprocess ----------------------------------------------------------------------------------------


def saeamort(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "saelens_amort", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in lines if ln.startswith("saeamort: error: ")]
    assert len(errors) == 1, proc.stderr
    assert re.search(pattern, errors[0]), errors[0]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """`saeamort ARGS` in this process (faster than a subprocess): its exit status and what it printed on stderr."""
    from saelens_amort.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def assert_cli_user_error(capsys, pattern: str, *args: str) -> None:
    """`saeamort ARGS` exits 2 with one `saeamort: error:` line on stderr matching `pattern`."""
    code, err = run_cli(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("saeamort: error: "), (code, err)
    assert re.search(pattern, lines[0]), lines[0]


def sklearn_lasso_objective(dictionary, x, lam, *, tol: float = 1e-10, max_iter: int = 100000):
    """min F per row of the non-negative lasso by scikit-learn's coordinate descent (sklearn's α is λ / d_in): the
    independent reference for the lasso solvers."""
    import numpy as np
    import torch
    from sklearn.linear_model import Lasso

    X = dictionary.atoms.double().T.numpy()
    out = []
    for y in dictionary.target(x).double().numpy():
        w = Lasso(alpha=lam / X.shape[0], positive=True, fit_intercept=False, tol=tol, max_iter=max_iter).fit(X, y).coef_
        out.append(0.5 * np.sum((y - X @ w) ** 2) + lam * np.sum(w))
    return torch.tensor(out)

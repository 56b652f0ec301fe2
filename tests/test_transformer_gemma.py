"""Gemma 2 loading: the dtype keyword of the installed transformers, eager attention for
soft-capping, right padding (offline, on a tiny random Gemma 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geowall.config import ModelSpec
from geowall.sources import minilm_dir, transformer


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-gemma2")
    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        attn_logit_softcapping=0.5,
    )  # a small cap so that soft-capping changes the output
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.padding_side = "left"  # the loader must override a saved left padding
    tok.save_pretrained(path)
    return path


def test_dtype_keyword_matches_the_installed_transformers():
    import transformers
    from packaging.version import Version

    want = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    assert transformer.dtype_keyword() == want


def test_gemma2_loads_eager_in_its_dtype_with_right_padding(tiny_gemma):
    spec = ModelSpec(name="g", source="hf", hf_model=str(tiny_gemma), dtype="bfloat16")
    model, tok, forward = transformer.load(spec, seed=0, device=torch.device("cpu"))
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tok.padding_side == "right" and tok.pad_token is not None
    batch = tok(["a short one", "a somewhat longer sentence than the first"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 1 and batch["attention_mask"][0, -1] == 0  # padding on the right
    got = forward(batch, [0, 1])
    assert set(got) == {0, 1} and torch.isfinite(got[1].float()).all()


def test_soft_capping_changes_the_residual_stream(tiny_gemma):
    """What eager attention buys: an attention path that skips the cap (older transformers'
    SDPA for Gemma 2; the installed one may refuse SDPA outright) computes what a config
    with no cap computes, and that residual stream differs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_gemma)
    assert transformer.causal_lm_kwargs(config, "float32")["attn_implementation"] == "eager"
    uncapped = AutoConfig.from_pretrained(tiny_gemma, attn_logit_softcapping=None)
    assert "attn_implementation" not in transformer.causal_lm_kwargs(uncapped, "float32")
    kw = {transformer.dtype_keyword(): torch.float32, "attn_implementation": "eager"}
    ids = torch.randint(5, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    outs = []
    for cfg in (config, uncapped):
        m = AutoModelForCausalLM.from_pretrained(tiny_gemma, config=cfg, **kw).eval()
        with torch.no_grad():
            for block in m.model.layers:  # random weights give tiny logits: scale them past the cap
                block.self_attn.q_proj.weight *= 10
                block.self_attn.k_proj.weight *= 10
            outs.append(m(input_ids=ids, output_hidden_states=True).hidden_states[-1].numpy())
    assert not np.allclose(outs[0], outs[1], atol=1e-4)

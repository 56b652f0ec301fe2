"""SAEs on disk in sae-lens's format (``cfg.json`` + ``sae_weights.safetensors``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from geowall.sae.model import TopKConfig, TopKSAE, TrainedSAE, unwrap

__all__ = ["save_sae", "load_sae"]

_GEOWALL_META = "geowall.json"


def _to_sae_lens(sae: TopKSAE, metadata: dict[str, Any] | None = None):
    """A sae-lens ``TopKSAE`` with our weights (on CPU, float32)."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    cfg = sae_lens.TopKSAEConfig(
        d_in=sae.d_in,
        d_sae=sae.width,
        k=sae.k,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        rescale_acts_by_decoder_norm=False,
        metadata=SAEMetadata(**{"sae_lens_training_version": None, **(metadata or {})}),
    )
    out = sae_lens.TopKSAE(cfg)
    state = {
        "W_enc": sae.W_enc.detach().float().cpu().T.contiguous(),
        "b_enc": sae.b_enc.detach().float().cpu().clone(),
        "W_dec": sae.W_dec.detach().float().cpu().clone(),
        "b_dec": sae.b_dec.detach().float().cpu().clone(),
    }
    out.load_state_dict(state)
    return out


def save_sae(sae: Any, folder: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Save a geowall SAE in sae-lens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``).

    ``sae_lens.SAE.load_from_disk(folder)`` gives back a sae-lens ``TopKSAE`` with the
    same reconstructions. ``metadata`` (JSON-serialisable) lands in ``cfg.json``'s
    metadata and in ``geowall.json``. The folder is written in full beside the target
    and renamed into place, so a crash never leaves a half-written SAE.
    """
    trained = sae if isinstance(sae, TrainedSAE) else None
    sae = unwrap(sae)
    if not isinstance(sae, TopKSAE):
        raise TypeError(f"save_sae: expected a geowall TopKSAE, got {type(sae).__name__}")
    meta = dict(metadata or {})
    if trained is not None:
        meta.setdefault("seed", trained.seed)
        meta.setdefault("steps", trained.steps)
        meta.setdefault("train_tokens", trained.train_tokens)
        meta.setdefault("lr", trained.lr)
    meta.setdefault("trainer", "geowall.sae")
    json.dumps(meta)  # fail early on a non-serialisable metadata value
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _to_sae_lens(sae, meta).save_model(tmp)
        cfg_extra = {
            "architecture": "topk",
            "width": sae.width,
            "k": sae.k,
            "d_in": sae.d_in,
            "k_aux": sae.cfg.k_aux,
            "auxk_coef": sae.cfg.auxk_coef,
            **meta,
        }
        (tmp / _GEOWALL_META).write_text(json.dumps(cfg_extra, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename directory ``src`` onto ``dst`` (moving an existing ``dst`` aside first)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def load_sae(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> TopKSAE:
    """Load a geowall TopK SAE saved by :func:`save_sae` (reads the sae-lens files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"load_sae: missing {p}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("architecture") != "topk" or cfg.get("rescale_acts_by_decoder_norm", False):
        raise ValueError(
            f"{cfg_path}: expected a plain sae-lens 'topk' SAE, got architecture={cfg.get('architecture')!r}"
        )
    extra = json.loads((folder / _GEOWALL_META).read_text()) if (folder / _GEOWALL_META).is_file() else {}
    state = load_file(str(w_path), device="cpu")
    d, W = int(cfg["d_in"]), int(cfg["d_sae"])
    expected = {"W_enc": (d, W), "b_enc": (W,), "W_dec": (W, d), "b_dec": (d,)}
    for key, shape in expected.items():
        if key not in state or tuple(state[key].shape) != shape:
            got = tuple(state[key].shape) if key in state else "missing"
            raise ValueError(f"{w_path}: key {key!r} has shape {got}, expected {shape}")
    tk = TopKConfig(
        d_in=d, width=W, k=int(cfg["k"]), k_aux=extra.get("k_aux"), auxk_coef=float(extra.get("auxk_coef", 1 / 32))
    )
    sae = TopKSAE(tk, device="cpu")
    with torch.no_grad():
        sae.W_enc.copy_(state["W_enc"].T)
        sae.b_enc.copy_(state["b_enc"])
        sae.W_dec.copy_(state["W_dec"])
        sae.b_dec.copy_(state["b_dec"])
    return sae.to(device).eval()

"""Activation store and harvesting (pipeline step 00).

Layout, per model: ``<run_dir>/<model>/acts/layer_LL/{train,eval}.npy`` (float32,
(n, d), read back memory-mapped) with ``manifest.json`` beside them (model, source,
layer, n_train, n_eval, d, dtype, corpus hash, and for the synthetic zoo the ground
truth). A layer is complete iff its manifest exists and matches the request; the
manifest is written last, so a killed run never leaves a layer that looks complete.
Arrays are filled in temporary ``.partial`` memmaps and renamed into place.

Token selection: documents are shuffled with the profile seed, tokenised with
truncation at ``max_seq_len`` and fed in batches; every non-special, non-padding
token is kept, in order, until ``n_train`` (from train documents) and ``n_eval``
(from held-out evaluation documents) tokens are filled. Beside the activations, step 00 stores
``tokens_<split>.npy`` (token ids) and ``docs_<split>.npy`` (each token's document: an index into
the split's documents), which the document-block resampling of step 02 uses.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from geowall.io import load_npy, read_json, save_npy, write_json

SPLITS = ("train", "eval")


class ActivationError(ValueError):
    """Activations are missing, stale, or contain non-finite values."""


def layer_dir(run_dir: Path, model: str, layer: int) -> Path:
    return Path(run_dir) / model / "acts" / f"layer_{layer:02d}"


def layer_manifest(run_dir: Path, model: str, layer: int) -> dict:
    path = layer_dir(run_dir, model, layer) / "manifest.json"
    if not path.is_file():
        raise ActivationError(f"no activations for model {model!r} layer {layer} under {path.parent} (run step 'activations' first)")
    return read_json(path)


def load(run_dir: Path, model: str, layer: int, split: str = "train", *, check: bool = True) -> np.ndarray:
    """Memory-mapped (n, d) float32 activations. ``check`` scans for NaN/Inf in chunks."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    man = layer_manifest(run_dir, model, layer)
    x = load_npy(layer_dir(run_dir, model, layer) / f"{split}.npy")
    if x.shape != (man[f"n_{split}"], man["d"]):
        raise ActivationError(f"model {model!r} layer {layer} {split}: shape {x.shape} does not match its manifest")
    if check:
        check_finite(x, model=model, layer=layer, split=split)
    return x


def doc_ids(run_dir: Path, model: str, split: str = "train") -> np.ndarray | None:
    """Each harvested token's document id (``docs_<split>.npy``, step 00), or None where there are
    no documents (the synthetic zoo) or the activations predate document ids."""
    path = Path(run_dir) / model / "acts" / f"docs_{split}.npy"
    return load_npy(path) if path.is_file() else None


def check_finite(x: np.ndarray, *, model: str, layer: int, split: str, chunk: int = 65536) -> None:
    bad = 0
    for i in range(0, len(x), chunk):
        bad += int((~np.isfinite(np.asarray(x[i : i + chunk]))).any(axis=1).sum())
    if bad:
        raise ActivationError(f"model {model!r} layer {layer} {split}: {bad} of {len(x)} rows contain NaN or Inf")


def _request(model_spec, acts_spec, corpus_hash: str | None, seed: int, layer: int, d: int) -> dict:
    return {
        "model": model_spec.name,
        "source": model_spec.source,
        "hf_model": model_spec.hf_model,
        "zoo": model_spec.zoo,
        "layer": layer,
        "n_train": acts_spec.n_train,
        "n_eval": acts_spec.n_eval,
        "max_seq_len": acts_spec.max_seq_len,
        "d": d,
        "dtype": "float32",
        "model_dtype": model_spec.dtype,
        "corpus_hash": corpus_hash,
        "seed": seed,
        "manifold": _manifold(model_spec, layer),
    }


def _manifold(model_spec, layer: int) -> dict | None:
    """The synthetic layer's definition (so a changed zoo invalidates stored points)."""
    if model_spec.source != "synthetic":
        return None
    from dataclasses import asdict

    from geowall.sources.synthetic import ZOOS

    return asdict(ZOOS[model_spec.zoo][layer])


def _is_done(run_dir: Path, request: dict) -> bool:
    path = layer_dir(run_dir, request["model"], request["layer"]) / "manifest.json"
    if not path.is_file():
        return False
    man = read_json(path)
    return all(man.get(k) == v for k, v in request.items())


class _LayerWriter:
    """Fills preallocated .partial memmaps for one layer, then commits them atomically."""

    def __init__(self, folder: Path, n: dict[str, int], d: int):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)  # stale layer: no longer complete
        self.folder, self.n = folder, n
        self.arrays = {
            s: np.lib.format.open_memmap(folder / f".{s}.npy.partial", mode="w+", dtype=np.float32, shape=(n[s], d))
            for s in SPLITS
        }

    def write(self, split: str, start: int, rows: np.ndarray) -> None:
        self.arrays[split][start : start + len(rows)] = rows

    def check(self, meta: dict) -> None:
        for s, arr in self.arrays.items():
            arr.flush()
            check_finite(arr, model=meta["model"], layer=meta["layer"], split=s)

    def commit(self, meta: dict) -> None:
        """Rename the filled arrays into place, then write the manifest (last)."""
        for s in self.arrays:
            os.replace(self.folder / f".{s}.npy.partial", self.folder / f"{s}.npy")
        self.arrays = {}
        write_json(self.folder / "manifest.json", meta)

    def abort(self) -> None:
        self.arrays = {}
        for s in SPLITS:
            (self.folder / f".{s}.npy.partial").unlink(missing_ok=True)


def harvest(model_spec, layers: list[int], acts_spec, *, run_dir: Path, seed: int, device: str = "cpu", corpus=None, progress: bool = True) -> dict:
    """Harvest every requested layer not already complete. Returns counts done / skipped."""
    from geowall.sources import model_info

    d = model_info(model_spec).d
    chash = corpus.hash if corpus is not None else None
    requests = {layer: _request(model_spec, acts_spec, chash, seed, layer, d) for layer in layers}
    todo = [layer for layer in layers if not _is_done(run_dir, requests[layer])]
    skipped = len(layers) - len(todo)
    if skipped:
        print(f"{model_spec.name}: {skipped} of {len(layers)} layers already harvested, skipped")
    if not todo:
        return {"harvested": 0, "skipped": skipped}
    if model_spec.source == "synthetic":
        _harvest_synthetic(model_spec, todo, requests, run_dir, seed, progress)
    else:
        if corpus is None:
            raise ValueError(f"model {model_spec.name!r}: a corpus is needed for source {model_spec.source!r}")
        _harvest_transformer(model_spec, todo, requests, acts_spec, corpus, run_dir, seed, device, progress)
    return {"harvested": len(todo), "skipped": skipped}


def _harvest_synthetic(spec, todo, requests, run_dir, seed, progress) -> None:
    from geowall.sources.synthetic import layer_points

    for layer in tqdm(todo, desc=f"{spec.name} layers", disable=not progress):
        req = requests[layer]
        x, truth = layer_points(spec.zoo, layer, req["n_train"] + req["n_eval"], seed)
        w = _LayerWriter(layer_dir(run_dir, spec.name, layer), {"train": req["n_train"], "eval": req["n_eval"]}, x.shape[1])
        try:
            w.write("train", 0, x[: req["n_train"]])
            w.write("eval", 0, x[req["n_train"] :])
            w.check(req)
            w.commit({**req, "truth": truth})
        except BaseException:
            w.abort()
            raise


def _harvest_transformer(spec, todo, requests, acts_spec, corpus, run_dir, seed, device, progress) -> None:
    import torch

    from geowall.sources import transformer

    dev = transformer.resolve_device(device)
    model, tok, forward = transformer.load(spec, seed=seed, device=dev)
    d = requests[todo[0]]["d"]
    n = {"train": acts_spec.n_train, "eval": acts_spec.n_eval}
    writers = {layer: _LayerWriter(layer_dir(run_dir, spec.name, layer), n, d) for layer in todo}
    tokens_dir = Path(run_dir) / spec.name / "acts"
    try:
        for split, docs in (("train", corpus.train), ("eval", corpus.eval)):
            order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(docs))
            ids = np.zeros(n[split], dtype=np.int64)
            doc_of = np.zeros(n[split], dtype=np.int64)  # each token's document (index into the split's docs)
            filled = 0
            bar = tqdm(total=n[split], desc=f"{spec.name} {split} tokens", unit="tok", disable=not progress)
            for start in range(0, len(order), acts_spec.batch_size):
                if filled >= n[split]:
                    break
                batch_docs = [docs[i] for i in order[start : start + acts_spec.batch_size]]
                batch = tok(batch_docs, truncation=True, max_length=acts_spec.max_seq_len, padding=True,
                            return_special_tokens_mask=True, return_tensors="pt")
                keep = (batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool())
                with torch.inference_mode():
                    outs = forward({k: v.to(dev) for k, v in batch.items()}, todo)
                take = min(int(keep.sum()), n[split] - filled)
                flat_keep = keep.reshape(-1).nonzero().squeeze(1)[:take]
                for layer in todo:
                    rows = outs[layer].reshape(-1, d).float()[flat_keep.to(dev)].cpu().numpy()
                    writers[layer].write(split, filled, rows)
                ids[filled : filled + take] = batch["input_ids"].reshape(-1)[flat_keep].numpy()
                row_of = flat_keep.numpy() // batch["input_ids"].shape[1]
                doc_of[filled : filled + take] = order[start : start + acts_spec.batch_size][row_of]
                filled += take
                bar.update(take)
            bar.close()
            if filled < n[split]:
                raise ActivationError(
                    f"model {spec.name!r}: the corpus's {split} documents hold only {filled} usable tokens, "
                    f"activations.n_{split} asks for {n[split]}"
                )
            save_npy(tokens_dir / f"tokens_{split}.npy", ids)
            save_npy(tokens_dir / f"docs_{split}.npy", doc_of)
        for layer in todo:  # check every layer before committing any
            writers[layer].check(requests[layer])
        for layer in todo:
            writers[layer].commit(requests[layer])
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def summary(run_dir: Path, models: list[tuple[str, list[int]]]):
    """One row per model, layer, split (a ``pandas.DataFrame``): n, d, mean and sd of
    token norms, finiteness."""
    import pandas as pd

    rows = []
    for model, layers in models:
        for layer in layers:
            for split in SPLITS:
                x = load(run_dir, model, layer, split, check=False)
                norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
                rows.append({"model": model, "layer": layer, "split": split, "n": x.shape[0], "d": x.shape[1],
                             "norm_mean": norms.mean(), "norm_sd": norms.std(), "finite": bool(np.isfinite(norms).all())})
    return pd.DataFrame(rows)


def assert_no_special_tokens(run_dir: Path, spec) -> None:
    """The harvested token ids contain no special token of the model's tokenizer."""
    from transformers import AutoTokenizer

    from geowall.sources import minilm_dir

    path = minilm_dir() if spec.source.startswith("minilm") else spec.hf_model
    special = set(AutoTokenizer.from_pretrained(path).all_special_ids)
    for split in SPLITS:
        ids = load_npy(Path(run_dir) / spec.name / "acts" / f"tokens_{split}.npy")
        found = special.intersection(np.unique(ids).tolist())
        if found:
            raise ActivationError(f"model {spec.name!r} {split}: special token ids {sorted(found)} among harvested tokens")

"""Activation store and harvesting (pipeline step 00).

Layout, per model: ``<run_dir>/<model>/acts/layer_LL/{train,eval}.npy`` (float32,
(n, d), read back memory-mapped) with ``manifest.json`` beside them (model, source,
layer, n_train, n_eval, d, dtype, corpus hash, and for the synthetic zoo the ground
truth). A layer is complete iff its manifest exists and matches the request; the
manifest is written last, so a killed run never leaves a layer that looks complete.
Arrays are filled in temporary ``.partial`` memmaps and renamed into place.

Token selection: documents are shuffled with the profile seed, tokenised with
truncation at ``max_seq_len``; every non-special token (for the decoder LMs also not at
position 0, the attention sink: ``sources.drops_first_position``) is kept, in that order, until
``n_train`` (from train documents) and ``n_eval`` (from held-out evaluation documents)
tokens are filled. The chosen documents then run through the model in batches sorted
by length (little padding), each document's rows written at its place in the order.
Beside the activations, step 00 stores ``tokens_<split>.npy`` (token ids) and
``docs_<split>.npy`` (each token's document: an index into the split's documents), which
the document-block resampling of step 02 uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

# the store's read side (layout, manifest, checked memory-mapped load) lives in geowall.io,
# below the model sources, so that geowall.sources.gemma_scope can read evaluation tokens
from geowall.io import SPLITS, ActivationError, check_finite, layer_dir, layer_manifest, load_npy, save_npy, write_json
from geowall.io import load_activations as load


def doc_ids(run_dir: Path, model: str, split: str = "train") -> np.ndarray | None:
    """Each harvested token's document id (``docs_<split>.npy``, step 00), or None where there are
    no documents (the synthetic zoo) or the activations predate document ids."""
    path = Path(run_dir) / model / "acts" / f"docs_{split}.npy"
    return load_npy(path) if path.is_file() else None


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
    } | _exclusions(model_spec)


def _exclusions(model_spec) -> dict:
    """Token exclusions beyond special tokens and padding, recorded in the manifest of the sources
    that have them (so that a changed rule recomputes, and older runs' manifests stay valid)."""
    from geowall.sources import drops_first_position

    return {"excluded": "special tokens, padding, position 0"} if drops_first_position(model_spec) else {}


def _manifold(model_spec, layer: int) -> dict | None:
    """The synthetic layer's definition (so a changed zoo invalidates stored points)."""
    if model_spec.source != "synthetic":
        return None
    from dataclasses import asdict

    from geowall.sources.synthetic import ZOOS

    return asdict(ZOOS[model_spec.zoo][layer])


def _is_done(run_dir: Path, request: dict) -> bool:
    try:
        man = layer_manifest(run_dir, request["model"], request["layer"])
    except ActivationError:  # no manifest: not harvested (or killed before its last write)
        return False
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

    def write_rows(self, split: str, dest: np.ndarray, rows: np.ndarray) -> None:
        """Scatter ``rows`` to row indices ``dest`` (runs of consecutive rows per document)."""
        arr = self.arrays[split]
        breaks = np.flatnonzero(np.diff(dest) != 1) + 1
        for seg_rows, seg_dest in zip(np.split(rows, breaks), np.split(dest, breaks)):
            arr[seg_dest[0] : seg_dest[0] + len(seg_dest)] = seg_rows

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


def harvest(
    model_spec,
    layers: list[int],
    acts_spec,
    *,
    run_dir: Path,
    seed: int,
    device: str = "cpu",
    corpus=None,
    progress: bool = True,
) -> dict:
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
        w = _LayerWriter(
            layer_dir(run_dir, spec.name, layer), {"train": req["n_train"], "eval": req["n_eval"]}, x.shape[1]
        )
        try:
            w.write("train", 0, x[: req["n_train"]])
            w.write("eval", 0, x[req["n_train"] :])
            w.check(req)
            w.commit({**req, "truth": truth})
        except BaseException:
            w.abort()
            raise


def plan_tokens(lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Which documents (in the given order) fill ``n`` tokens, and where each one's tokens go.

    ``lengths``: usable tokens per document, in selection order. Returns ``(take, offset,
    filled)``: tokens taken from each document (the last one partially, later ones 0), the
    row where each document's tokens start, and the total filled (``< n`` if the documents
    run out). The token set is the one a sequential pass in this order would keep, whatever
    order the documents are then run through the model in.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    take = np.clip(n - offset, 0, lengths)
    return take, offset, int(take.sum())


def length_batches(lengths: np.ndarray, token_budget: int, max_docs: int) -> list[np.ndarray]:
    """Document indices grouped into batches of similar length (sorted, longest first), each
    with at most ``token_budget`` padded tokens and ``max_docs`` documents."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, cur = [], []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # the longest of a batch comes first
        if cur and ((len(cur) + 1) * width > token_budget or len(cur) >= max_docs):
            batches.append(np.array(cur))
            cur = []
        cur.append(int(i))
    if cur:
        batches.append(np.array(cur))
    return batches


def _harvest_transformer(spec, todo, requests, acts_spec, corpus, run_dir, seed, device, progress) -> None:
    """Documents are chosen in a seeded shuffled order until the token count is met, then
    run through the model sorted by length (little padding: several times faster on CPU
    than padding fixed-size batches to the longest document); each document's rows land
    at its place in the shuffled order."""
    import torch

    from geowall.sources import drops_first_position, transformer

    dev = transformer.resolve_device(device)
    model, tok, forward = transformer.load(spec, seed=seed, device=dev)
    drop_first = drops_first_position(spec)
    d = requests[todo[0]]["d"]
    n = {"train": acts_spec.n_train, "eval": acts_spec.n_eval}
    writers = {layer: _LayerWriter(layer_dir(run_dir, spec.name, layer), n, d) for layer in todo}
    tokens_dir = Path(run_dir) / spec.name / "acts"
    token_budget = acts_spec.batch_size * acts_spec.max_seq_len
    try:
        for split, docs in (("train", corpus.train), ("eval", corpus.eval)):
            order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(docs))
            enc_ids, enc_keep, lengths = [], [], []
            for start in range(0, len(order), 512):  # tokenise only as many documents as needed
                if sum(lengths) >= n[split]:
                    break
                enc = tok(
                    [docs[i] for i in order[start : start + 512]],
                    truncation=True,
                    max_length=acts_spec.max_seq_len,
                    return_special_tokens_mask=True,
                )
                for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
                    enc_ids.append(ids)
                    enc_keep.append(~np.asarray(special, dtype=bool))
                    if drop_first:  # the attention sink (see sources.drops_first_position)
                        enc_keep[-1][:1] = False
                    lengths.append(int(enc_keep[-1].sum()))
            take, offset, filled = plan_tokens(np.array(lengths, dtype=np.int64), n[split])
            if filled < n[split]:
                raise ActivationError(
                    f"model {spec.name!r}: the corpus's {split} documents hold only {filled} usable tokens, "
                    f"activations.n_{split} asks for {n[split]}"
                )
            used = np.flatnonzero(take > 0)
            seq_len = np.array([len(enc_ids[i]) for i in used])
            ids_out = np.zeros(n[split], dtype=np.int64)
            doc_of = np.zeros(n[split], dtype=np.int64)  # each token's document (index into the split's docs)
            bar = tqdm(total=n[split], desc=f"{spec.name} {split} tokens", unit="tok", disable=not progress)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            for batch_idx in length_batches(seq_len, token_budget, 4 * acts_spec.batch_size):
                docs_b = used[batch_idx]
                width = max(len(enc_ids[i]) for i in docs_b)
                input_ids = torch.full((len(docs_b), width), pad, dtype=torch.long)
                mask = torch.zeros((len(docs_b), width), dtype=torch.long)
                keep = torch.zeros((len(docs_b), width), dtype=torch.bool)
                for r, i in enumerate(docs_b):
                    L = len(enc_ids[i])
                    input_ids[r, :L] = torch.tensor(enc_ids[i])
                    mask[r, :L] = 1
                    kept = np.flatnonzero(enc_keep[i])[: take[i]]  # the first take[i] usable tokens
                    keep[r, torch.from_numpy(kept)] = True
                with torch.inference_mode():
                    outs = forward({"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}, todo)
                flat_keep = keep.reshape(-1).nonzero().squeeze(1)
                # destination rows: each document's tokens are contiguous from its offset
                dest = np.concatenate([offset[i] + np.arange(take[i]) for i in docs_b])
                for layer in todo:
                    rows = outs[layer].reshape(-1, d).float()[flat_keep.to(dev)].cpu().numpy()
                    writers[layer].write_rows(split, dest, rows)
                ids_out[dest] = input_ids.reshape(-1)[flat_keep].numpy()
                doc_of[dest] = np.repeat(order[docs_b], take[docs_b])
                bar.update(len(dest))
            bar.close()
            save_npy(tokens_dir / f"tokens_{split}.npy", ids_out)
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
                rows.append(
                    {
                        "model": model,
                        "layer": layer,
                        "split": split,
                        "n": x.shape[0],
                        "d": x.shape[1],
                        "norm_mean": norms.mean(),
                        "norm_sd": norms.std(),
                        "finite": bool(np.isfinite(norms).all()),
                    }
                )
    return pd.DataFrame(rows)


def assert_no_special_tokens(run_dir: Path, spec) -> None:
    """The harvested token ids contain no special token of the model's tokenizer."""
    from transformers import AutoTokenizer

    from geowall.sources import tokenizer_dir

    path = tokenizer_dir(spec)
    special = set(AutoTokenizer.from_pretrained(path).all_special_ids)
    for split in SPLITS:
        ids = load_npy(Path(run_dir) / spec.name / "acts" / f"tokens_{split}.npy")
        found = special.intersection(np.unique(ids).tolist())
        if found:
            raise ActivationError(
                f"model {spec.name!r} {split}: special token ids {sorted(found)} among harvested tokens"
            )

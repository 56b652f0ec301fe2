"""Transfer: does a law fitted on model A predict model B's per-layer exponents from
B's geometry alone?

A law (:func:`geowall.law.fit_law`) is fitted on A and applied to B's summaries,
standardised with A's training means and sds. Everything is scored draw by draw, so
each score comes with its posterior distribution, and against three references:

* a **permutation null**: B's geometry shuffled across B's layers (the law fixed), which
  says what scores a law with no information about B's ordering reaches by chance;
* the **in-sample ceiling**: the same law fitted on B itself (closed form), the best a
  law of this form can do on B;
* a **level-shift R^2** (``r2_shift``): R^2 after matching the prediction's mean to B's,
  separating "the ordering transferred" (``r2_shift``, ``spearman``) from "the level
  transferred" (``r2``).

With few layers of B (fewer than :data:`FEW_LAYERS`) the scores are noted as
indicative only (:func:`words`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from geowall import bayes
from geowall.law import SUMMARIES, design_matrix, fit_law, geometry_wide, law_meta, min_training_layers
from geowall.nulls import closed_form_law

__all__ = [
    "CURVATURE_FREE",
    "DEFAULT_SETS",
    "FEW_LAYERS",
    "LAW_SETS",
    "law_rows",
    "predict",
    "transfer",
    "transfer_scores",
    "run_transfer",
    "words",
]

FEW_LAYERS = 8
# The transfer's predictor sets. "law3" drops curvature: beside the four-summary law it shows what
# curvature adds to a transfer. (Curvature now exists at every layer; law_rows falls back to law3
# only where a direction has no four-summary row, which a run can no longer produce by withholding.)
CURVATURE_FREE = tuple(x for x in SUMMARIES if x != "curvature")
DEFAULT_SETS: dict[str, tuple[str, ...]] = {"law": SUMMARIES, "law3": CURVATURE_FREE, "depth": ("depth",), "mean": ()}
SET_WORDS = {"law": "four-summary law", "law3": "curvature-free law (TwoNN, PR, local residual)"}
LAW_SETS = ("law", "law3")  # in order of preference where a pair has both


def law_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """One scored geometric-law row per (train, test) direction: the four-summary law where it
    was fitted, else the curvature-free one (``law3``); directions with neither keep their
    four-summary row with its note."""
    t = scores[scores["predictor_set"].isin(LAW_SETS)].copy()
    if not len(t):
        return t
    scored = t["note"].isna() if "note" in t else pd.Series(True, index=t.index)
    t["_rank"] = (~scored) * 10 + t["predictor_set"].map(LAW_SETS.index)
    out = t.sort_values("_rank", kind="stable").groupby(["train_model", "test_model"], sort=False).head(1)
    return out.drop(columns="_rank").sort_index()


def predict(
    law_idata,
    geometry_B: pd.DataFrame,
    exponents_B: pd.DataFrame | None = None,
    *,
    models: Iterable[str] | None = None,
    include_stage1_sd: bool = True,
    max_draws: int = 4000,
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Predictive draws for B's layers: ``(table, mu, pred)`` with ``mu`` (n_layers,
    n_draws) the law's mean and ``pred`` the predictive draws (plus residual and, with
    ``exponents_B`` and ``include_stage1_sd``, B's Stage 1 sd), in target units.

    B's true summaries are drawn around B's observations with B's SEs per draw. A law
    with several model intercepts predicts a new model with their average."""
    preds, sc, set_name, target = law_meta(law_idata)
    wide = geometry_wide(geometry_B)
    if models is not None:
        wide = wide[wide["model"].isin([str(m) for m in models])]
    for p in preds:
        if p not in wide.columns:
            raise ValueError(f"geometry_B: lacks summary {p!r} needed by the law ({set_name})")
    wide = wide.dropna(subset=list(preds)).sort_values(["model", "layer"]).reset_index(drop=True)
    if exponents_B is not None:
        ex = exponents_B.assign(model=exponents_B["model"].astype(str), layer=exponents_B["layer"].astype(int))
        ex = ex[["model", "layer", f"{target}_mean", f"{target}_sd"]].rename(
            columns={f"{target}_mean": "observed", f"{target}_sd": "observed_sd"}
        )
        wide = wide.merge(ex, on=["model", "layer"], how="inner")
    else:
        wide["observed"] = np.nan
        wide["observed_sd"] = np.nan
    if len(wide) == 0:
        raise ValueError("transfer: no layers of model B with both geometry and (if given) exponents")
    rng = np.random.default_rng(seed)
    post = law_idata.posterior.stack(sample=("chain", "draw"))
    S = post.sizes["sample"]
    take = rng.choice(S, size=min(S, max_draws), replace=False)
    b0 = post["b0"].values
    b0 = (b0.mean(0) if b0.ndim == 2 else b0)[take]
    sigma = post["sigma"].values[take]
    mu = np.broadcast_to(b0[None, :], (len(wide), len(take))).copy()
    if preds:
        b = post["b"].transpose("predictor", "sample").values[:, take]  # (P, S)
        X, SE = design_matrix(wide, preds, sc)
        xt = X[:, :, None] + SE[:, :, None] * rng.standard_normal((len(wide), len(preds), len(take)))
        mu = mu + np.einsum("nps,ps->ns", xt, b)
    pred = mu + sigma[None, :] * rng.standard_normal(mu.shape)
    if exponents_B is not None and include_stage1_sd:
        pred = pred + (wide["observed_sd"].to_numpy(float)[:, None] / sc["y_sd"]) * rng.standard_normal(mu.shape)
    return wide, sc["y_mean"] + sc["y_sd"] * mu, sc["y_mean"] + sc["y_sd"] * pred


def transfer(
    law_idata,
    geometry_B: pd.DataFrame,
    exponents_B: pd.DataFrame | None = None,
    *,
    models: Iterable[str] | None = None,
    interval: float = 0.9,
    include_stage1_sd: bool = True,
    max_draws: int = 4000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-layer predictions for model B (:func:`predict`), one row per layer of B:
    ``train_model, test_model, predictor_set, model, layer, depth, pred_mean, pred_sd,
    pred_lo, pred_hi, observed, observed_sd, covered`` (equal-tailed ``interval``)."""
    preds, sc, set_name, target = law_meta(law_idata)
    wide, mu, pred = predict(
        law_idata,
        geometry_B,
        exponents_B,
        models=models,
        include_stage1_sd=include_stage1_sd,
        max_draws=max_draws,
        seed=seed,
    )
    q = (1 - interval) / 2
    out = wide[["model", "layer", "depth"]].copy()
    # the predictive mean is E[mu]; averaging mu (not the noisy draws) avoids Monte Carlo jitter
    out["pred_mean"] = mu.mean(1)
    out["pred_sd"] = pred.std(1, ddof=1)
    out["pred_lo"] = np.quantile(pred, q, axis=1)
    out["pred_hi"] = np.quantile(pred, 1 - q, axis=1)
    out["observed"] = wide["observed"].to_numpy(float)
    out["observed_sd"] = wide["observed_sd"].to_numpy(float)
    out["covered"] = (out["observed"] >= out["pred_lo"]) & (out["observed"] <= out["pred_hi"])
    out.insert(0, "train_model", "+".join(json.loads(law_idata.attrs.get("geowall_train_models", "[]"))))
    out.insert(1, "test_model", "+".join(sorted(out["model"].unique())))
    out.insert(2, "predictor_set", set_name)
    out.attrs["interval"] = interval
    return out


def _r2(obs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R^2 of each column of ``pred`` (n, S) against ``obs`` (n,), with obs' own mean."""
    sst = float(((obs - obs.mean()) ** 2).sum())
    if sst <= 0:
        return np.full(pred.shape[1], np.nan)
    return 1.0 - ((obs[:, None] - pred) ** 2).sum(0) / sst


def _spearman(obs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    if len(obs) < 3 or np.ptp(obs) == 0:
        return np.full(pred.shape[1], np.nan)
    ro = rankdata(obs) - (len(obs) + 1) / 2
    rp = rankdata(pred, axis=0) - (len(obs) + 1) / 2
    den = np.sqrt((ro**2).sum() * (rp**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ro[:, None] * rp).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def transfer_scores(
    law_idata,
    geometry_B: pd.DataFrame,
    exponents_B: pd.DataFrame,
    *,
    models: Iterable[str] | None = None,
    interval: float = 0.9,
    n_perm: int = 500,
    max_draws: int = 2000,
    seed: int = 0,
    hdi_prob: float = 0.94,
) -> dict[str, Any]:
    """Scores of one law on one test model, each with its per-draw distribution:

    * ``r2``: predictive R^2 of the law's mean per draw against B's observed values (B's
      own mean as reference: a constant prediction scores <= 0);
    * ``r2_shift``: the same after shifting each draw's prediction to B's mean (ordering
      and spread, not level);
    * ``spearman``: rank correlation per draw (NaN for a constant prediction);
    * ``coverage90``: share of B's values (redrawn within their Stage 1 sd per draw)
      inside the ``interval`` predictive intervals.

    Each gives ``<score>`` (at the posterior mean prediction; for coverage, of the
    observed means), ``<score>_mean``, ``<score>_hdi_3``, ``<score>_hdi_97``. Then the
    permutation null (``n_perm`` shuffles of B's geometry across B's layers, law fixed,
    scored at the mean prediction): ``p_perm_spearman``, ``p_perm_r2_shift``; the
    in-sample ceiling (the law's predictors fitted on B itself in closed form):
    ``ceiling_r2``, ``ceiling_spearman``; and ``n_layers``.
    """
    from scipy.stats import spearmanr

    preds, sc, set_name, target = law_meta(law_idata)
    wide, mu, pred = predict(law_idata, geometry_B, exponents_B, models=models, max_draws=max_draws, seed=seed)
    obs = wide["observed"].to_numpy(float)
    osd = wide["observed_sd"].to_numpy(float)
    n = len(obs)
    rng = np.random.default_rng(seed + 1)
    m = mu.mean(1)
    q = (1 - interval) / 2
    lo, hi = np.quantile(pred, q, axis=1), np.quantile(pred, 1 - q, axis=1)
    obs_draws = obs[:, None] + osd[:, None] * rng.standard_normal((n, 400))
    const = np.ptp(m) <= 1e-12 * max(1.0, float(np.abs(m).max()))
    dists = {
        "r2": _r2(obs, mu),
        "r2_shift": _r2(obs, mu - mu.mean(0) + obs.mean()),
        "spearman": np.full(mu.shape[1], np.nan) if const else _spearman(obs, mu),
        "coverage90": ((obs_draws >= lo[:, None]) & (obs_draws <= hi[:, None])).mean(0),
    }
    point = {
        "r2": float(_r2(obs, m[:, None])[0]),
        "r2_shift": float(_r2(obs, (m - m.mean() + obs.mean())[:, None])[0]),
        "spearman": np.nan if const or n < 3 else float(spearmanr(obs, m).statistic),
        "coverage90": float(((obs >= lo) & (obs <= hi)).mean()),
    }
    row: dict[str, Any] = {
        "train_model": "+".join(json.loads(law_idata.attrs.get("geowall_train_models", "[]"))),
        "test_model": "+".join(sorted(wide["model"].unique())),
        "predictor_set": set_name,
        "target": target,
    }
    for k, d in dists.items():
        s = bayes.summarise_draws(d, hdi_prob)
        row[k] = point[k]
        row[f"{k}_mean"], row[f"{k}_hdi_3"], row[f"{k}_hdi_97"] = s["mean"], s["hdi_lo"], s["hdi_hi"]
    # permutation null: B's geometry shuffled over B's layers, law's mean prediction
    if preds and not const and n >= 3:
        null_rho, null_r2s = np.empty(n_perm), np.empty(n_perm)
        for i in range(n_perm):
            p = rng.permutation(n)
            mp = m[p]
            null_rho[i] = spearmanr(obs, mp).statistic
            null_r2s[i] = _r2(obs, (mp - mp.mean() + obs.mean())[:, None])[0]
        row["p_perm_spearman"] = float((1 + (null_rho >= point["spearman"]).sum()) / (1 + n_perm))
        row["p_perm_r2_shift"] = float((1 + (null_r2s >= point["r2_shift"]).sum()) / (1 + n_perm))
    else:
        row["p_perm_spearman"] = row["p_perm_r2_shift"] = np.nan
    # in-sample ceiling: the same predictors fitted on B itself
    row["ceiling_r2"] = row["ceiling_spearman"] = np.nan
    if preds and n >= len(preds) + 3:
        tab = wide.rename(columns={"observed": "y", "observed_sd": "y_sd"})
        try:
            cf = closed_form_law(tab, preds, model_effects=False)
            X, _ = design_matrix(tab, preds, cf["scaling"])
            fitted = cf["scaling"]["y_mean"] + cf["scaling"]["y_sd"] * (cf["fit"].mean[0] + X @ cf["b_mean"])
            row["ceiling_r2"] = float(_r2(obs, fitted[:, None])[0])
            row["ceiling_spearman"] = float(spearmanr(obs, fitted).statistic)
        except ValueError:  # a predictor constant over B's layers
            pass
    row["n_layers"] = int(n)
    row["few_layers"] = bool(n < FEW_LAYERS)
    return row


def words(row: Mapping[str, Any]) -> str:
    """One sentence on a transfer score row, saying so when B has few layers."""
    note = row.get("note")
    name = SET_WORDS.get(row["predictor_set"], f"{row['predictor_set']} law")
    if isinstance(note, str) and note:
        return f"{name}, {row['train_model']} -> {row['test_model']}: not scored: {note}."
    s = (
        f"{name}, {row['train_model']} -> {row['test_model']}: Spearman "
        f"{row['spearman']:.2f} [{row['spearman_hdi_3']:.2f}, {row['spearman_hdi_97']:.2f}], permutation p "
        f"{row['p_perm_spearman']:.3f}; R^2 {row['r2']:.2f}, with a level shift {row['r2_shift']:.2f} "
        f"(in-sample ceiling {row['ceiling_r2']:.2f}); 90% coverage {row['coverage90']:.2f}."
    )
    if row["n_layers"] < FEW_LAYERS:
        s += (
            f" Only {row['n_layers']} layers of {row['test_model']}: a rank correlation over so few points is "
            f"fragile and these scores are indicative only."
        )
    return s


def _withheld(wide: pd.DataFrame, exponents_df: pd.DataFrame, a: str, b: str, preds: Sequence[str]) -> str:
    """Why the law on ``preds`` cannot go from A to B ('' when it can): a model with no layer
    that has every predictor (and, for A, an exponent)."""
    cols = [p for p in preds if p in wide.columns]
    have = wide.dropna(subset=cols)
    fitted = set(zip(exponents_df["model"].astype(str), exponents_df["layer"].astype(int)))
    n_a = sum((m, int(l)) in fitted for m, l in zip(have["model"].astype(str), have["layer"]) if m == a)
    n_b = int((have["model"].astype(str) == b).sum())
    need_a = min_training_layers(len(preds))  # the rule fit_law enforces
    why = [f"{b} has no layer with every summary of the set (withheld: see geometry.parquet)"] if n_b == 0 else []
    if n_a < need_a:
        why.insert(0, f"{a} has {n_a} layers with every summary of the set and an exponent, the law needs {need_a}")
    return "; ".join(why)


def run_transfer(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    pairs: Iterable[tuple[str, str]],
    *,
    predictor_sets: Mapping[str, Sequence[str]] | None = None,
    target: str = "log_alpha",
    settings: bayes.SamplerSettings | None = None,
    seed: int = 0,
    check: bool = True,
    progressbar: bool = False,
    n_perm: int = 500,
    kinds: Mapping[str, str] | None = None,
):
    """Fit each law on model A and predict model B, for every ``(A, B)`` in ``pairs``.

    ``predictor_sets`` defaults to :data:`DEFAULT_SETS`: the four-summary law, the
    curvature-free law (``law3``: what curvature adds) and two baselines, depth only and A's
    mean. Fits on the
    same A are shared across pairs; each is sampled with ``settings`` and, with ``check``,
    goes through :func:`geowall.bayes.check_fit` with their thresholds.

    Each geometric law's row also carries the depth baseline scored on *the same* test
    layers (``depth_r2``, ``depth_r2_shift``, ``depth_spearman``: the law may see fewer
    layers of B than depth does, where a summary is withheld), so that "beats depth" compares
    like with like. ``kinds`` (``{model: kind}``, :func:`geowall.law.model_kinds`) adds
    ``train_kind`` and ``test_kind``: the verdict judges directions between pretrained
    models only.

    Returns ``(scores, predictions, fits)``: one :func:`transfer_scores` row per (pair,
    set) (``transfer.parquet``), the per-layer predictions and ``{(A, set): idata}``.
    """
    sets = dict(predictor_sets or DEFAULT_SETS)
    fits: dict[tuple[str, str], Any] = {}
    scores, preds = [], []
    wide = geometry_wide(geometry_df)

    def fit(a, i, name, ps):
        key = (a, name)
        if key not in fits:
            fits[key] = fit_law(
                exponents_df,
                geometry_df,
                predictors=ps,
                target=target,
                models=[a],
                settings=settings,
                seed=seed + 31 * i,
                name=name,
                progressbar=progressbar,
            )
            if check:
                bayes.check_fit(fits[key], settings, label=f"transfer law {name!r} on {a}")
        return fits[key]

    names = list(sets)
    for a, b in pairs:
        a, b = str(a), str(b)
        for i, (name, ps) in enumerate(sets.items()):
            missing = _withheld(wide, exponents_df, a, b, ps)
            if missing:
                # A summary withheld at every layer of A or B (e.g. curvature above the tangent
                # cap) leaves nothing to fit or predict: say so in the table instead of failing.
                scores.append(
                    {"train_model": a, "test_model": b, "predictor_set": name, "n_layers": 0, "note": missing}
                )
                continue
            law = fit(a, i, name, ps)
            preds.append(transfer(law, geometry_df, exponents_df, models=[b], seed=seed))
            row = transfer_scores(law, geometry_df, exponents_df, models=[b], seed=seed, n_perm=n_perm)
            if name in LAW_SETS and "depth" in sets and not _withheld(wide, exponents_df, a, b, sets["depth"]):
                # the depth baseline on the law's own test layers of B
                have = wide[wide["model"].astype(str) == b].dropna(subset=[p for p in ps if p in wide.columns])
                keep = set(zip(have["model"].astype(str), have["layer"].astype(int)))
                g = geometry_df[[(str(m), int(l)) in keep for m, l in zip(geometry_df["model"], geometry_df["layer"])]]
                dfit = fit(a, names.index("depth"), "depth", sets["depth"])
                d = transfer_scores(dfit, g, exponents_df, models=[b], seed=seed, n_perm=0)
                row.update({f"depth_{k}": d[k] for k in ("r2", "r2_shift", "spearman")})
            scores.append(row)
    out = pd.DataFrame(scores)
    if kinds is not None and len(out):
        out["train_kind"] = out["train_model"].map(lambda m: kinds.get(str(m), "pretrained"))
        out["test_kind"] = out["test_model"].map(lambda m: kinds.get(str(m), "pretrained"))
    return out, (pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()), fits

"""Geometry of an activation point cloud: the four layerwise summaries of step 02.

For a layer's activations X (n points in R^d) we measure

``id_twonn``
    TwoNN intrinsic dimension (Facco et al. 2017), the linear-fit variant that is
    ``skdim.id.TwoNN``'s default, after removing duplicates and near-duplicates
    (``estimators.distinct_points``).
``pr``
    participation ratio (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues:
    a linear ("how many directions carry the variance") dimension; the U-statistic
    estimate of the population value.
``curvature``
    mean normal curvature per tangent direction, ||H|| / dim, from a fit of each kNN patch
    on its tangent scores and the squared distance to the base point (``estimators._bend_fit``;
    exact on a sphere at every dimension and patch size), root mean square over patches,
    times the cloud's RMS radius: **1 = a sphere whose radius equals the cloud's RMS
    radius**, whatever its dimension; 0 = flat. Defined at every tangent dimension (no cap).
``local_residual``
    share of the cloud's variance that lies off the local second-order model (each patch's
    tangent flat bent by its mean curvature): off-manifold spread and anisotropic curvature
    (see ``estimators.local_residual``). 0 on a flat or a sphere of any dimension.

``summaries`` returns all four with standard errors from a document-block
half-sampling that reruns every estimator (see ``summaries``); ``sensitivity`` reruns
them at other settings of their main knobs and adds a second ID estimator (Levina-Bickel
MLE); ``multiscale_id`` shows whether the ID is stable across scales. ``SUMMARY_NAMES``
is the one home of the summary names.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from geowall.geometry.estimators import (
    MIN_PATCH_K,
    NEAR_DUP_TOL,
    PATCH_K,
    TANGENT_TOL,
    _check_fraction,
    _dedup,
    _points,
    _rms_kappa,
    _twonn_fit,
    _twonn_ratios,
    curvature,
    distinct_points,
    local_geometry,
    local_residual,
    mle_id,
    multiscale_id,
    participation_ratio,
    pr_weighted,
    rms_radius,
    twonn,
    unique_rows,
)
from geowall.geometry.known import known_answers, noise_for_share, reference_cloud
from geowall.kernels import knn

__all__ = [
    "ID_SCALE_TOL",
    "TRUTH_RULES",
    "TRUTH_MIN_POINTS",
    "id_scale_gap",
    "truth_agreement",
    "MIN_PATCH_K",
    "NEAR_DUP_TOL",
    "PATCH_K",
    "SUMMARY_NAMES",
    "TANGENT_TOL",
    "curvature",
    "known_answers",
    "distinct_points",
    "layer_jumps",
    "local_geometry",
    "local_residual",
    "mle_id",
    "noise_for_share",
    "multiscale_id",
    "participation_ratio",
    "ESTIMATOR_CHECK",
    "rank_agreement",
    "reference_cloud",
    "rms_radius",
    "sensitivity",
    "summaries",
    "twonn",
    "unique_rows",
]

SUMMARY_NAMES = ("id_twonn", "pr", "curvature", "local_residual")
_Z95 = 1.959963984540054
MULTS = (0.5, 1, 2)  # knob settings of the sensitivity analysis, as multiples of the default
# patch sizes: 48, 64, 96 neighbours. At 32, MPNet's 23- to 28-dimensional layers leave a patch fit almost no
# points beyond its tangent scores (Spearman of MPNet's curvature ordering with the default: 0.27 at 32,
# 0.99 at 48, 0.98 at 96, 0.96 at 128).
K_MULTS = (0.75, 1, 1.5)


# ----------------------------------------------------------------------------- one cloud, all four
def _ratios_after_dedup(Xu: torch.Tensor, dist: np.ndarray | None) -> np.ndarray:
    """TwoNN's ratios r2 / r1 of the distinct points ``Xu``, from the near-duplicate rule's last
    neighbour distances ``dist`` when it computed them (no second kNN search), else searched."""
    if dist is not None and dist.shape[1] >= 2:
        r1, r2 = dist[:, 0], dist[:, 1]
        return r2[r1 > 0] / r1[r1 > 0]
    return _twonn_ratios(Xu)[0]


def _knn_summaries(
    X: torch.Tensor,
    *,
    seed: int,
    k: int,
    n_base: int,
    discard_fraction: float,
    tangent_tol: float,
    near_dup_tol: float,
) -> dict:
    """The three kNN-based summaries of one cloud (plus what the table reports beside them)."""
    keep, dist = _dedup(X, near_dup_tol)
    Xu = X[torch.from_numpy(keep).to(X.device)]
    mu = _ratios_after_dedup(Xu, dist)
    out = {"id_twonn": float(_twonn_fit(mu, discard_fraction)), "n_id": len(mu), "n_distinct": len(keep)}
    try:
        loc = local_geometry(Xu, n_base=n_base, seed=seed, k=k, tangent_tol=tangent_tol, _distinct_done=True)
    except ValueError as err:  # too few distinct points for the patches
        out.update(curvature=math.nan, local_residual=math.nan, dim=math.nan, n_base=0, patch_error=str(err))
        return out
    R = rms_radius(Xu)
    out.update(
        curvature=_rms_kappa(loc) * R,
        local_residual=float(loc.residual.mean()) / R**2,
        dim=float(loc.dim.median()),
        n_base=len(loc),
    )
    return out


def _half_samples(groups: np.ndarray, n_rep: int, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Row masks of ``n_rep`` random halves of the blocks, and the delete-d jackknife factor r / d."""
    blocks, inv = np.unique(groups, return_inverse=True)
    g = len(blocks)
    if g < 4:
        raise ValueError(f"block resampling needs at least 4 documents (blocks); got {g}")
    r = g // 2  # blocks kept per replicate
    masks = []
    for _ in range(n_rep):
        chosen = np.zeros(g, dtype=bool)
        chosen[rng.choice(g, size=r, replace=False)] = True
        masks.append(chosen[inv])
    return masks, r / (g - r)


def summaries(
    X,
    *,
    n_boot: int = 30,
    seed: int = 0,
    k: int | None = None,
    n_base: int = 300,
    max_points: int | None = None,
    discard_fraction: float = 0.1,
    tangent_tol: float = TANGENT_TOL,
    near_dup_tol: float = NEAR_DUP_TOL,
    groups=None,
    device=None,
) -> pd.DataFrame:
    """The four geometric summaries of ``X`` (n, d) with document-block standard errors.

    One row per summary, in the order of ``SUMMARY_NAMES``; columns summary, estimate,
    se, lo, hi (estimate -/+ 1.96 se), n (distinct points for TwoNN, all rows for PR,
    base points for curvature / local_residual), k (kNN scale: 2 for TwoNN, NaN for PR,
    the patch size ``k`` (default ``PATCH_K``) for curvature and local_residual), n_boot
    (replicates), dim (median per-patch tangent dimension), n_blocks (documents).

    Uncertainty: ``groups`` gives each row's document (``None``: every row is its own
    block, as for the synthetic zoo). Each of ``n_boot`` replicates keeps a random half
    of the documents with all their tokens and *reruns every estimator* on them (new
    duplicate removal, kNN graph, TwoNN fit, base points, tangent dimensions and patch
    fits; PR through the Gram-matrix identity of ``estimators.pr_weighted``), so the
    standard error includes kNN-graph and patch variability and the correlation of
    tokens within a document. Half-samples without replacement rather than a bootstrap
    with replacement: a document drawn twice would put exact duplicate tokens into the
    cloud, which the kNN estimators must discard, so a with-replacement bootstrap would
    silently shrink the sample. The variance is the delete-d jackknife's (Shao & Wu
    1989; d = half the documents): se^2 = (r / d) mean((theta_s - mean theta)^2) with r
    documents kept and d deleted (r / d ~ 1). Cost: ``n_boot`` reruns at half size; 20 to
    30 replicates give the se to about +/-15%, the choice of the profiles (the old
    200-replicate bootstrap held the kNN graph and patches fixed).
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2; got {n_boot!r}")
    _check_fraction(discard_fraction)
    ss = np.random.SeedSequence(seed)
    rng_sub, rng_rep, seq_base = (np.random.default_rng(s) for s in ss.spawn(3))
    X = _points(X, device, name="X", min_points=4)
    groups = np.arange(X.shape[0]) if groups is None else np.asarray(groups).reshape(-1)
    if len(groups) != X.shape[0]:
        raise ValueError(f"groups has {len(groups)} entries for {X.shape[0]} rows")
    if max_points is not None and X.shape[0] > max_points:
        sub = np.sort(rng_sub.choice(X.shape[0], size=int(max_points), replace=False))
        X, groups = X[torch.from_numpy(sub).to(X.device)], groups[sub]
    n = X.shape[0]
    base_seed = int(seq_base.integers(2**32))
    k = PATCH_K if k is None else k
    kw = {
        "k": k,
        "n_base": n_base,
        "discard_fraction": discard_fraction,
        "tangent_tol": tangent_tol,
        "near_dup_tol": near_dup_tol,
    }
    full = _knn_summaries(X, seed=base_seed, **kw)
    masks, factor = _half_samples(groups, n_boot, rng_rep)
    pr_all = pr_weighted(X, np.vstack([np.ones((1, n))] + [m[None].astype(float) for m in masks]))
    reps = []
    for i, m in enumerate(masks):
        rep = _knn_summaries(X[torch.from_numpy(np.flatnonzero(m)).to(X.device)], seed=base_seed + 1 + i, **kw)
        reps.append(rep)
    reps = pd.DataFrame(reps)
    reps["pr"] = pr_all[1:]
    est = {**full, "pr": float(pr_all[0])}
    rows = []
    for name in SUMMARY_NAMES:
        vals = reps[name].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        e = est[name]
        se = math.sqrt(factor * np.mean((vals - vals.mean()) ** 2)) if len(vals) > 1 and np.isfinite(e) else math.nan
        rows.append(
            {
                "summary": name,
                "estimate": e,
                "se": se,
                "lo": e - _Z95 * se,
                "hi": e + _Z95 * se,
                "n": {"id_twonn": full["n_id"], "pr": n}.get(name, full["n_base"]),
                "k": {"id_twonn": 2.0, "pr": math.nan}.get(name, float(k)),
                "n_boot": int(n_boot),
            }
        )
    out = pd.DataFrame(rows)
    local = out.summary.isin(["curvature", "local_residual"])
    out["dim"] = np.where(local, full["dim"], math.nan)
    out["n_blocks"] = len(np.unique(groups))
    return out


# ----------------------------------------------------------------------------- sensitivity
def sensitivity(
    X,
    *,
    seed: int = 0,
    n_base: int = 300,
    k: int | None = None,
    tangent_tol: float = TANGENT_TOL,
    near_dup_tol: float = NEAR_DUP_TOL,
    discard_fraction: float = 0.1,
    defaults: dict | None = None,
    multiscale: pd.DataFrame | None = None,
    device=None,
) -> pd.DataFrame:
    """Each summary at three settings of its main knobs, and a second ID estimator.

    Rows (summary, knob, setting, estimate, default): the middle setting is the one
    ``summaries`` uses (``default`` True). ``defaults`` ({summary: estimate}, e.g. the
    ``summaries`` table's estimates of the same points) fills the default settings
    instead of recomputing them (they are the same estimator on the same points).

    * ``id_twonn``, ``pr``: number of points, 1/4, 1/2 and all: the mean over 4 and 2 disjoint
      seeded subsets (a coarser scale, estimated from all the points). ``multiscale`` (this
      cloud's :func:`multiscale_id` table, same ``near_dup_tol`` and ``discard_fraction``) gives
      TwoNN's directly: its scales 4 and 2 are these settings;
    * ``id_twonn`` at a fixed scale: the discarded share of the largest ratios, 0.5, 1 and 2 x
      ``discard_fraction`` (0.05, 0.1, 0.2), TwoNN's own estimator setting;
    * ``curvature`` and ``local_residual`` (one patch fit gives both): the patch size,
      0.75, 1 and 1.5 x ``k`` (default ``PATCH_K`` = 64: 48, 64, 96 neighbours), and the
      tangent rule, 0.5, 1 and 2 x ``tangent_tol``;
    * ``id_mle``: Levina-Bickel MLE (``mle_id``) with k = 10, 20, 40 neighbours (20 is
      the comparison point: a second, coarser-scale estimate of the same dimension).
    """
    rng = np.random.default_rng(seed)
    k = PATCH_K if k is None else int(k)
    X = _points(X, device, name="X", min_points=4)
    keep, dist = _dedup(X, near_dup_tol)
    Xu = X[torch.from_numpy(keep).to(X.device)]
    n, nu = X.shape[0], Xu.shape[0]
    R = rms_radius(Xu)
    rows = []

    defaults = dict(defaults or {})

    def add(summary, knob, setting, value, default):
        rows.append(
            {"summary": summary, "knob": knob, "setting": float(setting), "estimate": float(value), "default": default}
        )

    def known(summary, default):  # the default setting's value, when the caller has it
        return default and summary in defaults

    # TwoNN's own setting at a fixed scale: the share of the largest ratios the fit discards, on the
    # full-density ratios (the near-duplicate rule's neighbour distances give them for free)
    mu = _ratios_after_dedup(Xu, dist)
    for mult in MULTS:
        if known("id_twonn", mult == 1):
            add("id_twonn", "discard_multiple", mult, defaults["id_twonn"], True)
        else:
            add("id_twonn", "discard_multiple", mult, _twonn_fit(mu, mult * discard_fraction), mult == 1)
    # Fewer points = a coarser scale (nearest-neighbour distances grow as n^(-1/id)). At a fraction
    # 1/s the points are split into s disjoint subsets and the estimate is their mean, as in
    # ``multiscale_id`` (whose scales 2 and 4 are exactly these TwoNN settings): the setting then
    # changes the scale only, not how many points carry the estimate.
    by_scale = {} if multiscale is None else multiscale.set_index("scale").id.to_dict()
    perm_u, perm = rng.permutation(nu), rng.permutation(n)
    for frac in (0.25, 0.5, 1.0):
        s = round(1 / frac)
        if known("id_twonn", frac == 1.0):
            add("id_twonn", "n_points", frac, defaults["id_twonn"], True)
        elif s in by_scale:
            add("id_twonn", "n_points", frac, by_scale[s], frac == 1.0)
        else:
            ids = []
            for part in _disjoint(perm_u, s):
                mu_s, _ = _twonn_ratios(Xu[torch.from_numpy(part).to(X.device)])
                ids.append(_twonn_fit(mu_s, discard_fraction))
            add("id_twonn", "n_points", frac, float(np.mean(ids)), frac == 1.0)
        if known("pr", frac == 1.0):
            add("pr", "n_points", frac, defaults["pr"], True)
        else:
            prs = [
                participation_ratio(X[torch.from_numpy(part).to(X.device)], unbiased=True)
                for part in _disjoint(perm, s)
            ]
            add("pr", "n_points", frac, float(np.mean(prs)), frac == 1.0)
    settings = [("k_multiple", m, {"k": max(MIN_PATCH_K, round(m * k)), "tangent_tol": tangent_tol}) for m in K_MULTS]
    settings += [("tangent_tol_multiple", m, {"k": k, "tangent_tol": m * tangent_tol}) for m in MULTS]
    for knob, mult, kw in settings:
        if kw["k"] > nu - 1 or not 0 < kw["tangent_tol"] < 1:
            continue
        default = mult == 1
        if default and known("curvature", True) and known("local_residual", True):
            add("curvature", knob, mult, defaults["curvature"], True)
            add("local_residual", knob, mult, defaults["local_residual"], True)
            continue
        loc = local_geometry(Xu, n_base=n_base, seed=seed, _distinct_done=True, **kw)
        add("curvature", knob, mult, _rms_kappa(loc) * R, default)
        add("local_residual", knob, mult, loc.residual.mean() / R**2, default)
    if 40 < nu:  # one kNN search serves the three neighbourhood sizes
        import skdim

        dist, idx = knn(Xu, 40)
        Xn = Xu.cpu().numpy()
        for kk in (10, 20, 40):
            est = skdim.id.MLE().fit(Xn, precomputed_knn_arrays=(dist[:, :kk], idx[:, :kk]), comb="mle")
            add("id_mle", "k", kk, est.dimension_, kk == 20)
    return pd.DataFrame(rows, columns=["summary", "knob", "setting", "estimate", "default"])


def _disjoint(perm: np.ndarray, s: int) -> list[np.ndarray]:
    """``s`` disjoint, sorted index sets of ``len(perm) // s`` (at least 4) from the permutation ``perm``."""
    m = max(4, len(perm) // s)
    return [np.sort(perm[j * m : (j + 1) * m]) for j in range(s) if (j + 1) * m <= len(perm)] or [np.sort(perm)]


ESTIMATOR_CHECK = "estimator (vs id_twonn)"  # rank_agreement's knob label of the second-estimator rows


def rank_agreement(sens: pd.DataFrame, *, min_rho: float = 0.8, min_layers: int = 4) -> pd.DataFrame:
    """Does each summary order the layers of a model the same way at every setting?

    ``sens``: ``sensitivity`` rows for many layers, with ``model`` and ``layer`` columns.
    Per (model, summary, knob, setting): Spearman's rho between the layers' estimates at
    that setting and at the default one, the number of layers compared, and ``flipped``
    (rho < ``min_rho`` over at least ``min_layers`` layers: the layer ordering changes under
    a reasonable setting; with fewer layers rho takes only a few coarse values and nothing
    is flagged). ``id_mle`` gets both checks: its own knob (10 and 40 neighbours against its
    default 20) and, as knob :data:`ESTIMATOR_CHECK`, its default against ``id_twonn``: two
    estimators of one dimension at different scales (2 and 20 neighbours), which disagree where
    the dimension depends on the scale (``multiscale_id``) even when each is stable.
    """
    from scipy.stats import spearmanr

    rows = []
    # one reference value per (model, summary, layer): a summary with two knobs has two default rows (equal)
    ref_all = sens[sens.default].groupby(["model", "summary", "layer"]).estimate.first().sort_index()
    checks = [(key, g, key[1]) for key, g in sens[~sens.default].groupby(["model", "summary", "knob", "setting"])]
    mle = sens[sens.default & (sens.summary == "id_mle")]
    checks += [((m, "id_mle", ESTIMATOR_CHECK, s), g, "id_twonn") for (m, s), g in mle.groupby(["model", "setting"])]
    for (model, summary, knob, setting), g, ref_name in checks:
        try:
            ref = ref_all.loc[(model, ref_name)]
        except KeyError:
            continue
        both = pd.concat([g.set_index("layer").estimate.rename("x"), ref.rename("y")], axis=1).dropna()
        rho = (
            float(spearmanr(both.x, both.y).statistic)
            if len(both) >= 3 and both.x.nunique() > 1 and both.y.nunique() > 1
            else math.nan
        )
        rows.append(
            {
                "model": model,
                "summary": summary,
                "knob": knob,
                "setting": setting,
                "n_layers": len(both),
                "rho": rho,
                "flipped": bool(np.isfinite(rho) and rho < min_rho and len(both) >= min_layers),
            }
        )
    return pd.DataFrame(rows, columns=["model", "summary", "knob", "setting", "n_layers", "rho", "flipped"])


def layer_jumps(geo: pd.DataFrame, sens: pd.DataFrame | None = None, *, z_crit: float = _Z95) -> pd.DataFrame:
    """Each summary's step between adjacent layers of a model: data or estimator?

    ``geo``: ``summaries`` rows of many layers (``model, layer, summary, estimate, se``);
    ``sens``: their ``sensitivity`` rows (optional). Per (model, summary, layer pair): the step
    ``diff`` (upper minus lower layer), its standard error ``se_diff`` = sqrt(se_a^2 + se_b^2)
    (the two layers' half-sample errors taken as independent: they are the same documents'
    tokens, so where the layers co-vary this overstates the error and understates ``z``),
    ``z`` = diff / se_diff, ``ratio`` (larger over smaller estimate), ``sign_kept`` (the step
    has the same sign at every knob setting of ``sens``; True without ``sens``) and ``kind``:

    * ``"data"``: |z| > ``z_crit`` and the sign is kept at every setting: the document-block
      intervals resolve the step and no setting of the estimator reverses it;
    * ``"noise"``: |z| <= ``z_crit``: the intervals overlap, the step is within sampling error;
    * ``"estimator"``: resolved at the default setting but reversed at another one: the step is
      a property of the estimator's setting, not of the data.
    """
    settings = pd.DataFrame(columns=["model", "summary", "layer", "knob", "setting", "estimate"])
    if sens is not None and len(sens):
        settings = sens[sens.summary.isin(SUMMARY_NAMES)][["model", "summary", "layer", "knob", "setting", "estimate"]]
    rows = []
    for (model, summary), g in geo[geo.summary.isin(SUMMARY_NAMES)].groupby(["model", "summary"], sort=False):
        g = g.sort_values("layer")
        alt = settings[(settings.model == model) & (settings.summary == summary)]
        alt = alt.pivot_table(index="layer", columns=["knob", "setting"], values="estimate")
        lay, est, se = g.layer.to_numpy(), g.estimate.to_numpy(float), g.se.to_numpy(float)
        for i in range(len(g) - 1):
            a, b = est[i], est[i + 1]
            se_diff = math.hypot(se[i], se[i + 1])
            z = (b - a) / se_diff if se_diff > 0 else (0.0 if b == a else math.copysign(math.inf, b - a))
            lo, hi = sorted((abs(a), abs(b)))
            steps = pd.Series(dtype=float)  # each knob setting's step between the same two layers
            if len(alt.columns):
                steps = alt.reindex([lay[i], lay[i + 1]]).diff().iloc[-1].dropna()
            kept = bool((np.sign(steps) == np.sign(b - a)).all()) if b != a else True
            rows.append(
                {
                    "model": model,
                    "summary": summary,
                    "layer_from": int(lay[i]),
                    "layer_to": int(lay[i + 1]),
                    "diff": b - a,
                    "se_diff": se_diff,
                    "z": z,
                    "ratio": hi / lo if lo > 0 else math.inf,
                    "sign_kept": kept,
                    "kind": "noise" if not abs(z) > z_crit else ("data" if kept else "estimator"),
                }
            )
    cols = ["model", "summary", "layer_from", "layer_to", "diff", "se_diff", "z", "ratio", "sign_kept", "kind"]
    return pd.DataFrame(rows, columns=cols)


ID_SCALE_TOL = 0.3  # TwoNN and its multiscale plateau "disagree" beyond this relative difference
# The zoo's known-answer rules (notebook 02 and tests/test_geometry.py): TwoNN within 15% of the true
# dimension (up to 8), curvature ordered like the truth, equal-radius spheres within 1.5x of each other,
# flat boxes below 0.2x the spheres; enforced from 2,000 points per layer (at a few hundred points an
# 8-dimensional patch spans a sizeable part of the cloud).
TRUTH_RULES = {"id_rel_err": 0.15, "id_max_dim": 8, "curv_rho": 0.8, "sphere_ratio": 1.5, "flat_share": 0.2}
TRUTH_MIN_POINTS = 2000


def id_scale_gap(geometry_df: pd.DataFrame, multi: pd.DataFrame, *, tol: float = ID_SCALE_TOL) -> pd.DataFrame:
    """TwoNN at full density against its multiscale plateau, per (model, layer).

    ``multi``: :func:`multiscale_id` rows of many layers (``model, layer, scale, id``); the
    plateau is the median over the decimated scales (s >= 2). Returns ``id_twonn, plateau,
    rel_diff`` (|TwoNN - plateau| / plateau) and ``disagree`` (rel_diff > ``tol``), indexed by
    (model, layer)."""
    plateau = multi[multi.scale > 1].groupby(["model", "layer"]).id.median().rename("plateau")
    ids = geometry_df[geometry_df.summary == "id_twonn"].set_index(["model", "layer"]).estimate.rename("id_twonn")
    gap = ids.to_frame().join(plateau)
    gap["rel_diff"] = (gap.id_twonn - gap.plateau).abs() / gap.plateau
    gap["disagree"] = gap.rel_diff > tol
    return gap


def truth_agreement(truth: pd.DataFrame, geometry_df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The zoo's estimates against its ground truth (``truth``: ``layers.truth_table``).

    Returns ``(both, stats)``: per layer the truth beside the estimates with ``id_rel_err``;
    ``stats``: ``id_max_rel_err`` (over true dimensions up to ``TRUTH_RULES['id_max_dim']``),
    ``curv_rho`` (Spearman of estimated against true curvature), ``sphere_ratio`` (largest
    over smallest sphere curvature), ``flat_max_share`` (largest flat-box curvature over the
    smallest sphere's) and ``passed``: every rule of :data:`TRUTH_RULES` met."""
    from scipy.stats import spearmanr

    wide = geometry_df.pivot(index=["model", "layer"], columns="summary", values="estimate").reset_index()
    both = truth.merge(wide, on=["model", "layer"])
    both["id_rel_err"] = (both.id_twonn - both.id_true).abs() / both.id_true
    sph, flat = both[both.kind == "sphere"].curvature, both[both.kind == "flat"].curvature
    r = TRUTH_RULES
    stats = {
        "id_max_rel_err": float(both.id_rel_err[both.id_true <= r["id_max_dim"]].max()),
        "curv_rho": float(spearmanr(both.curvature_true, both.curvature, nan_policy="omit").statistic),
        "sphere_ratio": float(sph.max() / sph.min()) if len(sph) else math.nan,
        "flat_max_share": float(flat.max() / sph.min()) if len(sph) and len(flat) else math.nan,
    }
    stats["passed"] = bool(
        stats["id_max_rel_err"] < r["id_rel_err"]
        and stats["curv_rho"] >= r["curv_rho"]
        and not stats["sphere_ratio"] >= r["sphere_ratio"]
        and not stats["flat_max_share"] >= r["flat_share"]
    )
    return both, stats

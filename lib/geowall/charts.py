"""Altair charts shared by the notebooks (one function per figure kind)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from geowall.geometry import SUMMARY_NAMES

alt.data_transformers.disable_max_rows()


# Static renderings stored beside each chart's interactive form: a vector PDF (what Quarto
# picks for the paper's PDF: it prefers application/pdf over images for LaTeX) and a PNG for
# readers without JavaScript. Both come from vl-convert's bundled renderer, offline.
STATIC_MIMES = ("application/pdf", "image/png")


def static_renderings(spec: dict) -> dict[str, str]:
    """Base64 PDF and PNG of a Vega-Lite spec (mime type -> data, as a notebook stores them)."""
    import base64

    import vl_convert as vlc

    pdf = vlc.vegalite_to_pdf(spec)
    png = vlc.vegalite_to_png(spec, scale=1)
    return {"application/pdf": base64.b64encode(pdf).decode(), "image/png": base64.b64encode(png).decode()}


def _render(spec: dict, **_) -> dict:
    """Mimebundle for a chart: vega-lite JSON (Jupyter front ends), an HTML div that
    draws itself with a page-level ``vegaEmbed`` (SVG renderer) and the static renderings
    of :func:`static_renderings` (the paper's PDF, readers without JavaScript). The report
    pages carry the Vega JavaScript inline once per page (see :mod:`geowall.report`), so
    charts draw with no network, in the offline build and in Quarto alike."""
    import json
    import uuid

    div = f"gw-chart-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(spec, sort_keys=True)
    html = (
        f'<div id="{div}" class="gw-chart" style="max-width:100%;overflow-x:auto"></div>\n<script>(function(){{'
        f"var spec={payload};"
        f'function draw(){{window.vegaEmbed("#{div}",spec,{{actions:false,renderer:"svg"}});}}'
        'if(window.vegaEmbed){draw();}else{window.addEventListener("load",draw);}'
        "})();</script>"
    )
    major = alt.SCHEMA_VERSION.lstrip("v").split(".")[0]
    return {
        "text/html": html,
        f"application/vnd.vegalite.v{major}+json": spec,
        **static_renderings(spec),
        "text/plain": "<Altair chart>",
    }


def vega_script() -> str:
    """One <script> with Vega, Vega-Lite and Vega-Embed inlined (vl-convert), matching Altair's schema."""
    import vl_convert as vlc

    minor = ".".join(alt.SCHEMA_VERSION.split(".")[:2])  # e.g. "v6.4"
    try:
        bundle = vlc.javascript_bundle(vl_version=minor)
    except ValueError:  # vl-convert does not know this Vega-Lite version: use its latest
        bundle = vlc.javascript_bundle()
    return "<script>\n" + bundle.replace("</script", "<\\/script") + "\n</script>"


alt.renderers.register("geowall", _render)
alt.renderers.enable("geowall")


def layer_norms(table: pd.DataFrame) -> alt.Chart:
    """Mean token norm per layer with a +-1 sd band, one colour per model."""
    df = table.assign(lo=table.norm_mean - table.norm_sd, hi=table.norm_mean + table.norm_sd)
    base = alt.Chart(df).encode(x=alt.X("layer:Q", title="layer (residual point)"), color=alt.Color("model:N"))
    band = base.mark_area(opacity=0.2).encode(y="lo:Q", y2="hi:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("norm_mean:Q", title="token norm (L2, activation units)"),
        tooltip=["model", "layer", "norm_mean", "norm_sd"],
    )
    return (band + line).properties(width=420, height=260)


# log axes of small panels: SI-prefixed labels (1k, 10k), dropped where they would collide
LOG_AXIS = alt.Axis(format="~s", labelOverlap="greedy")

SUMMARY_TITLES = dict(
    zip(
        SUMMARY_NAMES,
        ("TwoNN intrinsic dimension", "participation ratio", "curvature (scale-free)", "local residual"),
        strict=True,
    )
)


SUMMARY_UNITS = {
    "id_twonn": "TwoNN intrinsic dimension (dimensions)",
    "pr": "participation ratio (dimensions)",
    "curvature": "curvature (1 = sphere of the cloud's RMS radius)",
    "local_residual": "local residual (fraction of patch variance)",
}


def geometry_profiles(geo: pd.DataFrame) -> alt.FacetChart:
    """Each summary vs relative depth with its 95% interval, one colour per model."""
    df = geo.assign(title=geo.summary.map(SUMMARY_UNITS).fillna(geo.summary))
    base = alt.Chart(df).encode(x=alt.X("depth:Q", title=DEPTH_TITLE), color="model:N")
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("lo:Q", title=None), y2="hi:Q")
    line = base.mark_line(point=True).encode(y="estimate:Q", tooltip=["model", "layer", "estimate", "se"])
    return (
        (band + line)
        .properties(width=230, height=170)
        .facet(facet=alt.Facet("title:N", title=None, sort=list(SUMMARY_UNITS.values())), columns=2)
        .resolve_scale(y="independent")
    )


def multiscale(multi: pd.DataFrame) -> alt.FacetChart:
    df = multi.assign(series=multi.model + " L" + multi.layer.astype(str))
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("scale:Q", scale=alt.Scale(type="log", base=2), title="decimation s (n/s points)"),
            y=alt.Y("id:Q", title="TwoNN intrinsic dimension"),
            detail="series:N",
            color=alt.Color("depth:Q", scale=alt.Scale(scheme="viridis")),
            tooltip=["model", "layer", "scale", "n_points", "id"],
        )
        .properties(width=260, height=160)
        .facet(facet="model:N", columns=2)
        .resolve_scale(y="independent")
    )


def truth_scatter(both: pd.DataFrame) -> alt.HConcatChart:
    lim = float(max(both.id_true.max(), both.id_twonn.max())) + 1
    diag = alt.Chart(pd.DataFrame({"a": [0, lim]})).mark_line(color="grey", strokeDash=[4, 4]).encode(x="a:Q", y="a:Q")
    ids = (
        alt.Chart(both)
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("id_true:Q", title="true dimension"),
            y=alt.Y("id_twonn:Q", title="TwoNN estimate"),
            color="kind:N",
            shape="model:N",
            tooltip=["model", "layer", "kind", "id_true", "id_twonn"],
        )
    )
    curv = (
        alt.Chart(both)
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("curvature_true:Q", title="true curvature (unit-RMS units)"),
            y=alt.Y("curvature:Q", title="estimated curvature"),
            color="kind:N",
            shape="model:N",
            tooltip=["model", "layer", "kind", "curvature_true", "curvature"],
        )
    )
    return alt.hconcat((diag + ids).properties(width=260, height=240), curv.properties(width=260, height=240))


def budget_check(table: pd.DataFrame, max_change: float = 0.05) -> alt.LayerChart:
    """Each (model, layer, k) width exponent at the default budget against the longer one,
    with the line of no change and the criterion's band (relative change ``max_change``)."""
    lo = float(min(table.alpha_base.min(), table.alpha_long.min(), 0))
    hi = float(max(table.alpha_base.max(), table.alpha_long.max())) * 1.1
    line = pd.DataFrame({"a": [lo, hi], "lo": [lo * (1 - max_change), hi * (1 - max_change)]})
    line["hi"] = line.a * (1 + max_change)
    band = alt.Chart(line).mark_area(opacity=0.15, color="grey").encode(x="a:Q", y="lo:Q", y2="hi:Q")
    diag = alt.Chart(line).mark_line(color="grey", strokeDash=[4, 4]).encode(x="a:Q", y="a:Q")
    pts = (
        alt.Chart(table)
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("alpha_base:Q", title="width exponent α, default budget"),
            y=alt.Y("alpha_long:Q", title="α, longer budget"),
            color=alt.Color("model:N"),
            shape=alt.Shape("layer:N"),
            tooltip=["model", "layer", "k", "steps_base", "steps_long", "alpha_base", "alpha_long", "rel_change"],
        )
    )
    return (band + diag + pts).properties(width=320, height=280)


def sae_surfaces(metrics: pd.DataFrame, cfg=None) -> alt.FacetChart:
    """fvu against width (log-log) at each model's middle k, one line per layer coloured by
    relative depth, one panel per model: the layers' width slopes side by side, compact
    enough for a printed page (every k and every layer's own panel: :func:`stage1_surfaces`).

    Relative depth comes from ``cfg`` (:func:`geowall.layers.layer_depths`); without it, from
    the layer's index over the largest layer measured for its model."""
    df = metrics.copy()
    if cfg is not None:
        from geowall.layers import layer_depths

        depth = pd.DataFrame(layer_depths(cfg), columns=["model", "layer", "depth"])
        df = df.merge(depth, on=["model", "layer"], how="left")
    else:
        df["depth"] = df["layer"] / df.groupby("model")["layer"].transform("max").clip(lower=1)
    mid = df.groupby("model")["k"].agg(lambda k: sorted(set(k))[len(set(k)) // 2])
    df = df[df["k"] == df["model"].map(mid)]
    df["panel"] = df["model"] + " (k = " + df["k"].astype(str) + ")"
    panels = list(dict.fromkeys(df.sort_values("model", key=lambda m: m.map(_order(metrics)))["panel"]))
    return (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=18), strokeWidth=1.4)
        .encode(
            x=alt.X("width:Q", scale=alt.Scale(type="log", nice=False), title="width W (latents)", axis=LOG_AXIS),
            y=alt.Y("fvu:Q", scale=alt.Scale(type="log", nice=False), title="held-out fvu (fraction)"),
            color=alt.Color("depth:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title="relative depth"),
            detail="layer:N",
            tooltip=["model", "layer", "depth", "width", "k", "l0", "fvu", "dead_frac"],
        )
        .properties(width=140, height=115)
        .facet(facet=alt.Facet("panel:N", title=None, sort=panels), columns=3)
        .resolve_scale(x="independent", y="independent")
        .configure_legend(orient="bottom", gradientLength=180)
    )


def _order(df: pd.DataFrame) -> dict:
    """Models in the order they first appear in a table."""
    return {m: i for i, m in enumerate(dict.fromkeys(df["model"]))}


def stage1_surfaces(metrics: pd.DataFrame, surface: pd.DataFrame) -> alt.VConcatChart:
    """Measured fvu (points) and the posterior mean surface with its band, per layer; a row per model."""
    cols = ["model", "layer", "k", "width"]
    both = pd.concat(
        [
            metrics[cols + ["l0", "fvu"]].assign(src="data"),
            surface[cols + ["fvu_mean", "fvu_lo", "fvu_hi"]].assign(src="fit"),
        ],
        ignore_index=True,
    )
    rows = []
    for model, g in both.groupby("model", sort=False):
        enc = dict(
            x=alt.X("width:Q", scale=alt.Scale(type="log"), title="width W (latents)", axis=LOG_AXIS),
            color=alt.Color("k:O", scale=alt.Scale(scheme="viridis")),
        )
        fit = alt.Chart().transform_filter("datum.src == 'fit'")
        band = fit.mark_area(opacity=0.2).encode(
            y=alt.Y("fvu_lo:Q", scale=alt.Scale(type="log"), title="fvu (fraction unexplained)"), y2="fvu_hi:Q", **enc
        )
        line = fit.mark_line().encode(y="fvu_mean:Q", **enc)
        pts = (
            alt.Chart()
            .transform_filter("datum.src == 'data'")
            .mark_point(filled=True)
            .encode(y="fvu:Q", tooltip=["layer", "width", "k", "l0", "fvu"], **enc)
        )
        rows.append(
            alt.layer(band, line, pts, data=g)
            .properties(width=120, height=110)
            .facet(facet=alt.Facet("layer:O", title=f"{model}: layer"), columns=4)
        )
    return alt.vconcat(*rows)


DEPTH_TITLE = "relative depth (0 to 1)"
ALPHA_TITLE = "width exponent α"
FLOOR_TITLE = "floor (fvu)"


def _floor_status(df: pd.DataFrame) -> pd.Series:
    term = df["floor_term"].fillna(False).astype(bool) if "floor_term" in df else pd.Series(False, index=df.index)
    ident = (
        df["floor_identified"].fillna(False).astype(bool)
        if "floor_identified" in df
        else pd.Series(False, index=df.index)
    )
    return pd.Series(
        [
            "floor identified" if i else ("floor fitted, not identified" if t else "no floor term")
            for t, i in zip(term, ident)
        ],
        index=df.index,
    )


FLOOR_STATUS = ["floor identified", "floor fitted, not identified", "no floor term"]


def exponents_depth(exps: pd.DataFrame, cfg) -> alt.VConcatChart:
    """Width exponents against relative depth, one panel per model (each its own y scale),
    94% HDIs, the two functional forms side by side (colour) and the layers whose floor the
    grid identifies marked (shape); below, the fitted floors, a panel per model that has
    any (models without a floor term get no empty panel: the subtitle names them)."""
    from geowall.layers import layer_depths

    depth = pd.DataFrame(layer_depths(cfg), columns=["model", "layer", "depth"])
    df = exps.merge(depth, on=["model", "layer"])
    df = df.assign(floor_status=_floor_status(df))
    forms = sorted(df["form"].unique())
    # the two forms drawn a little apart so that their intervals do not overlap
    shift = {f: 0.012 * (i - (len(forms) - 1) / 2) for i, f in enumerate(forms)}
    df["x"] = df["depth"] + df["form"].map(shift)
    models = list(dict.fromkeys(df["model"]))
    x = alt.X("x:Q", title=DEPTH_TITLE, scale=alt.Scale(domain=[-0.05, 1.05], nice=False))
    colour = alt.Color("form:N", title="functional form", sort=forms)
    tip = ["model", "layer", "form", "alpha_mean", "alpha_hdi_3", "alpha_hdi_97", "floor_status"]
    base = alt.Chart().encode(x=x, color=colour)
    alpha = alt.layer(
        base.mark_rule(opacity=0.7).encode(y=alt.Y("alpha_hdi_3:Q", title=ALPHA_TITLE), y2="alpha_hdi_97:Q"),
        base.mark_point(filled=True, size=45).encode(
            y="alpha_mean:Q",
            shape=alt.Shape("floor_status:N", title="floor", scale=alt.Scale(domain=FLOOR_STATUS)),
            tooltip=tip,
        ),
        data=df,
    )
    panels = (
        alpha.properties(width=150, height=120)
        .facet(facet=alt.Facet("model:N", title=None, sort=models), columns=3)
        .resolve_scale(y="independent")
        .properties(title="Width exponent per layer")
    )
    fl = df[df["floor_mean"].notna()] if "floor_mean" in df else df.iloc[:0]
    if fl.empty:
        return alt.vconcat(
            panels.properties(
                title=alt.TitleParams(
                    "Width exponent per layer",
                    subtitle="No floor panel: no layer of any model has a width grid that supports a floor term.",
                )
            )
        ).configure_legend(orient="bottom", direction="horizontal")
    without = [m for m in models if m not in set(fl["model"])]
    sub = (
        [f"No panel for {', '.join(without)}: no layer there has a width grid that supports a floor term."]
        if without
        else []
    )
    fbase = alt.Chart().encode(x=x, color=colour)
    floors_ = alt.layer(
        fbase.mark_rule(opacity=0.7).encode(y=alt.Y("floor_hdi_3:Q", title=FLOOR_TITLE), y2="floor_hdi_97:Q"),
        fbase.mark_point(size=60, strokeWidth=1.5).encode(
            y="floor_mean:Q",
            fill=alt.condition(
                "datum.floor_status == 'floor identified'", alt.Fill("form:N", legend=None), alt.value("white")
            ),
            shape=alt.Shape("floor_status:N", title="floor", scale=alt.Scale(domain=FLOOR_STATUS)),
            tooltip=["model", "layer", "form", "floor_mean", "floor_hdi_3", "floor_hdi_97", "floor_status"],
        ),
        data=fl,
    )
    fpanels = (
        floors_.properties(width=150, height=120)
        .facet(facet=alt.Facet("model:N", title=None, sort=[m for m in models if m not in without]), columns=3)
        .resolve_scale(y="independent")
        .properties(
            title=alt.TitleParams("Floors, where the width grid supports one (filled: identified)", subtitle=sub)
        )
    )
    return (
        alt.vconcat(panels, fpanels)
        .resolve_scale(color="shared", shape="shared")
        .configure_legend(orient="bottom", direction="horizontal")
    )


def law_coefficients(coefs: pd.DataFrame, ppc: pd.DataFrame) -> alt.HConcatChart:
    c = coefs[coefs.b_mean.notna()].assign(label=lambda d: d.term.map(SUMMARY_TITLES).fillna(d.term))
    forest = (
        alt.Chart(c)
        .mark_rule()
        .encode(
            y=alt.Y("label:N", title=None),
            x=alt.X("b_hdi_3:Q", title="slope b (log α per SD of the summary)"),
            x2="b_hdi_97:Q",
        )
        + alt.Chart(c)
        .mark_point(filled=True, size=60)
        .encode(y="label:N", x="b_mean:Q", tooltip=["term", "b_mean", "b_hdi_3", "b_hdi_97", "p_gt0"])
        + alt.Chart(pd.DataFrame({"x": [0]})).mark_rule(strokeDash=[4, 4], color="grey").encode(x="x:Q")
    )
    lim = [float(min(ppc.pred_lo.min(), ppc.observed.min())), float(max(ppc.pred_hi.max(), ppc.observed.max()))]
    diag = alt.Chart(pd.DataFrame({"a": lim})).mark_line(color="grey", strokeDash=[4, 4]).encode(x="a:Q", y="a:Q")
    pp = alt.Chart(ppc).mark_rule().encode(
        x=alt.X("observed:Q", title="observed log α"),
        y=alt.Y("pred_lo:Q", title="predicted log α"),
        y2="pred_hi:Q",
        color="model:N",
    ) + alt.Chart(ppc).mark_point(filled=True).encode(
        x="observed:Q", y="pred_mean:Q", color="model:N", tooltip=["model", "layer", "observed", "pred_mean"]
    )
    return alt.hconcat(forest.properties(width=220, height=160), (diag + pp).properties(width=240, height=240))


def partial_residuals(ppc: pd.DataFrame) -> alt.Chart:
    long = []
    for s in SUMMARY_TITLES:
        if f"partial_resid_{s}" in ppc:
            long.append(
                pd.DataFrame(
                    {
                        "summary": SUMMARY_TITLES[s],
                        "x": ppc[f"x_std_{s}"],
                        "partial residual": ppc[f"partial_resid_{s}"],
                        "model": ppc.model,
                        "layer": ppc.layer,
                    }
                )
            )
    df = pd.concat(long, ignore_index=True)
    pts = (
        alt.Chart()
        .mark_point(filled=True)
        .encode(
            x=alt.X("x:Q", title="summary (standardised: SD units)"),
            y=alt.Y("partial residual:Q", title="partial residual (log α)"),
            color="model:N",
            tooltip=["model", "layer"],
        )
    )
    fit = (
        alt.Chart()
        .transform_regression("x", "partial residual")
        .mark_line(color="black")
        .encode(x="x:Q", y="partial residual:Q")
    )
    return alt.layer(pts, fit, data=df).properties(width=220, height=160).facet(facet="summary:N", columns=2)


def transfer(pred: pd.DataFrame) -> alt.FacetChart:
    df = pred.assign(direction=pred.train_model + " → " + pred.test_model)
    enc = dict(
        x=alt.X("observed:Q", title="observed log α (model B)"),
        color=alt.Color("predictor_set:N", title="predictor"),
    )
    rules = (
        alt.Chart()
        .mark_rule(opacity=0.5)
        .encode(y=alt.Y("pred_lo:Q", title="predicted log α (law from model A)"), y2="pred_hi:Q", **enc)
    )
    pts = (
        alt.Chart()
        .mark_point(filled=True)
        .encode(y="pred_mean:Q", tooltip=["direction", "layer", "observed", "pred_mean", "predictor_set"], **enc)
    )
    diag = alt.Chart().mark_line(color="grey", strokeDash=[4, 4]).encode(x="observed:Q", y="observed:Q")
    return (
        alt.layer(rules, pts, diag, data=df)
        .properties(width=220, height=180)
        .facet(facet="direction:N", columns=2)
        .resolve_scale(x="independent", y="independent")
    )


def floors(fl: pd.DataFrame) -> alt.HConcatChart:
    """Identified floors against curvature and TwoNN dimension (94% HDIs), one colour per
    model. A summary that no identified floor has a value for (curvature withheld at those
    layers) gets no empty panel: the chart's subtitle says why it is missing."""
    f = fl[fl.row_type == "floor"].assign(label=lambda d: d.model + " L" + d.layer.astype(str))
    charts_, missing = [], []
    for s in ("curvature", "id_twonn"):
        pts = f[f[s].notna()] if s in f else f.iloc[:0]
        if pts.empty:
            missing.append(SUMMARY_TITLES[s])
            continue
        base = alt.Chart(pts).encode(
            x=alt.X(f"{s}:Q", title=SUMMARY_UNITS[s], scale=alt.Scale(zero=False)), color="model:N"
        )
        charts_.append(
            (
                base.mark_rule().encode(y=alt.Y("floor_hdi_3:Q", title=FLOOR_TITLE), y2="floor_hdi_97:Q")
                + base.mark_point(filled=True, size=70).encode(y="floor_mean:Q", tooltip=["label", "floor_mean", s])
                + base.mark_text(dx=8, align="left", fontSize=10).encode(y="floor_mean:Q", text="label:N")
            ).properties(width=230, height=200)
        )
    n = len(f)
    if not charts_:
        note = "No identified floor in this run: nothing to draw." if n == 0 else "No summary values at the floors."
        return alt.hconcat(
            alt.Chart(pd.DataFrame({"t": [note]}))
            .mark_text(fontSize=12)
            .encode(text="t:N")
            .properties(width=460, height=40)
        )
    sub = [f"No {', '.join(missing)} panel: it is withheld at every layer with an identified floor."] if missing else []
    return alt.hconcat(*charts_).properties(
        title=alt.TitleParams(f"Identified floors ({n} layer{'s' if n != 1 else ''})", subtitle=sub)
    )


def sbc_ranks(ranks: pd.DataFrame, n_bins: int = 10) -> alt.FacetChart:
    """Simulation-based calibration: histogram of normalised ranks per grid and parameter,
    with the expected count per bin under uniformity (dashed)."""
    df = ranks.assign(u=(ranks["rank"] + 0.5) / ranks["n_ranks"])
    df["bin"] = (df["u"] * n_bins).astype(int).clip(upper=n_bins - 1) / n_bins
    counts = df.groupby(["grid", "param", "bin"]).size().rename("count").reset_index()
    expect = df.groupby(["grid", "param"]).size().rename("expected").div(n_bins).reset_index()
    bars = (
        alt.Chart()
        .mark_bar(opacity=0.7)
        .encode(
            x=alt.X("bin:Q", bin=alt.Bin(step=1 / n_bins), title="normalised rank"), y=alt.Y("count:Q", title="count")
        )
    )
    line = alt.Chart().mark_rule(strokeDash=[4, 4], color="black").encode(y="expected:Q")
    data = counts.merge(expect, on=["grid", "param"])
    return alt.layer(bars, line, data=data).properties(width=200, height=140).facet(row="grid:N", column="param:N")


def learning_curves(curves: pd.DataFrame, metrics: pd.DataFrame) -> alt.VConcatChart:
    """Held-out fvu against training tokens (log-log), one line per SAE, a panel per model and
    layer; SAEs that missed the plateau criterion (``plateaued`` false in ``metrics``) in red."""
    flags = metrics[["model", "layer", "width", "k", "plateaued"]]
    both = curves.merge(flags, on=["model", "layer", "width", "k"], how="left")
    both["sae"] = "W=" + both["width"].astype(str) + " k=" + both["k"].astype(str)
    both["status"] = both["plateaued"].map({True: "plateaued", False: "not plateaued"}).fillna("n/a")
    rows = []
    for model, g in both.groupby("model", sort=False):
        rows.append(
            alt.Chart(g)
            .mark_line(opacity=0.7)
            .encode(
                x=alt.X("tokens:Q", scale=alt.Scale(type="log"), title="training tokens", axis=LOG_AXIS),
                y=alt.Y("fvu_heldout:Q", scale=alt.Scale(type="log"), title="held-out fvu"),
                detail="sae:N",
                color=alt.Color(
                    "status:N",
                    scale=alt.Scale(
                        domain=["plateaued", "not plateaued", "n/a"], range=["#4c78a8", "#e45756", "#bbbbbb"]
                    ),
                ),
                tooltip=["model", "layer", "width", "k", "tokens", "fvu_heldout", "status"],
            )
            .properties(width=110, height=100)
            .facet(facet=alt.Facet("layer:O", title=f"{model}: layer"), columns=4)  # wrap: MPNet has 13
        )
    return alt.vconcat(*rows)

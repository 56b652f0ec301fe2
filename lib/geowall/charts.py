"""Altair charts shared by the notebooks (one function per figure kind)."""
from __future__ import annotations

import altair as alt
import pandas as pd

alt.data_transformers.disable_max_rows()


def _render(spec: dict, **_) -> dict:
    """Mimebundle for a chart: vega-lite JSON (Jupyter front ends) and an HTML div that
    draws itself with a page-level ``vegaEmbed`` (SVG renderer). The report pages carry
    the Vega JavaScript inline once per page (see :mod:`geowall.report`), so charts draw
    with no network, in the offline build and in Quarto alike."""
    import json
    import uuid

    div = f"gw-chart-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(spec, sort_keys=True)
    html = (
        f'<div id="{div}" class="gw-chart"></div>\n<script>(function(){{'
        f'var spec={payload};'
        f'function draw(){{window.vegaEmbed("#{div}",spec,{{actions:false,renderer:"svg"}});}}'
        'if(window.vegaEmbed){draw();}else{window.addEventListener("load",draw);}'
        "})();</script>"
    )
    major = alt.SCHEMA_VERSION.lstrip("v").split(".")[0]
    return {"text/html": html, f"application/vnd.vegalite.v{major}+json": spec, "text/plain": "<Altair chart>"}


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
    line = base.mark_line(point=True).encode(y=alt.Y("norm_mean:Q", title="token norm"),
                                             tooltip=["model", "layer", "norm_mean", "norm_sd"])
    return (band + line).properties(width=420, height=260)


def versions() -> dict:
    """Versions of the main libraries, for the last cell of every notebook."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "sae-lens", "numpy", "pandas", "pymc", "arviz", "altair", "papermill"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


SUMMARY_TITLES = {"id_twonn": "TwoNN intrinsic dimension", "pr": "participation ratio",
                  "curvature": "curvature (scale-free)", "local_residual": "local residual"}


def geometry_profiles(geo: pd.DataFrame) -> alt.FacetChart:
    """Each summary vs relative depth with its 95% interval, one colour per model."""
    df = geo.assign(title=geo.summary.map(SUMMARY_TITLES))
    base = alt.Chart(df).encode(x=alt.X("depth:Q", title="relative depth"), color="model:N")
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("lo:Q", title=None), y2="hi:Q")
    line = base.mark_line(point=True).encode(y="estimate:Q", tooltip=["model", "layer", "estimate", "se"])
    return (band + line).properties(width=230, height=170).facet(
        facet=alt.Facet("title:N", title=None, sort=list(SUMMARY_TITLES.values())), columns=2
    ).resolve_scale(y="independent")


def multiscale(multi: pd.DataFrame) -> alt.FacetChart:
    df = multi.assign(series=multi.model + " L" + multi.layer.astype(str))
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("scale:Q", scale=alt.Scale(type="log", base=2), title="decimation s"),
        y=alt.Y("id:Q", title="TwoNN ID"), detail="series:N", color=alt.Color("depth:Q", scale=alt.Scale(scheme="viridis")),
        tooltip=["model", "layer", "scale", "n_points", "id"],
    ).properties(width=200, height=160).facet(facet="model:N", columns=4).resolve_scale(y="independent")


def truth_scatter(both: pd.DataFrame) -> alt.HConcatChart:
    lim = float(max(both.id_true.max(), both.id_twonn.max())) + 1
    diag = alt.Chart(pd.DataFrame({"a": [0, lim]})).mark_line(color="grey", strokeDash=[4, 4]).encode(x="a:Q", y="a:Q")
    ids = alt.Chart(both).mark_point(filled=True, size=60).encode(
        x=alt.X("id_true:Q", title="true dimension"), y=alt.Y("id_twonn:Q", title="TwoNN estimate"),
        color="kind:N", shape="model:N", tooltip=["model", "layer", "kind", "id_true", "id_twonn"])
    curv = alt.Chart(both).mark_point(filled=True, size=60).encode(
        x=alt.X("curvature_true:Q", title="true curvature (unit-RMS units)"), y=alt.Y("curvature:Q", title="estimated curvature"),
        color="kind:N", shape="model:N", tooltip=["model", "layer", "kind", "curvature_true", "curvature"])
    return alt.hconcat((diag + ids).properties(width=260, height=240), curv.properties(width=260, height=240))


def sae_surfaces(metrics: pd.DataFrame) -> alt.VConcatChart:
    """fvu vs width (log-log), one line per k, faceted by layer; one row of panels per model."""
    rows = []
    for model, g in metrics.groupby("model", sort=False):
        rows.append(alt.Chart(g).mark_line(point=True).encode(
            x=alt.X("width:Q", scale=alt.Scale(type="log"), title="width W"),
            y=alt.Y("fvu:Q", scale=alt.Scale(type="log"), title="fvu"),
            color=alt.Color("k:O", scale=alt.Scale(scheme="viridis")),
            tooltip=["model", "layer", "width", "k", "l0", "fvu", "dead_frac"],
        ).properties(width=120, height=110, title=str(model)).facet(column=alt.Column("layer:O", title=f"{model}: layer")))
    return alt.vconcat(*rows)

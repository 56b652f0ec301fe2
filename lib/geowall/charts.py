"""Altair charts shared by the notebooks (one function per figure kind)."""
from __future__ import annotations

import altair as alt
import pandas as pd

alt.data_transformers.disable_max_rows()


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

"""The report's sources hold together without Quarto: project file, citations, shortcodes."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from geowall import pipeline, report

ROOT = Path(__file__).resolve().parents[1]


def bib_keys():
    return re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(), flags=re.M)


def test_quarto_project_parses_and_every_page_has_a_source():
    cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert cfg["project"]["type"] == "website" and cfg["execute"]["enabled"] is False
    rendered = cfg["project"]["render"]
    for page in rendered:
        src = ROOT / (page[: -len(".ipynb")] + ".py" if page.endswith(".ipynb") else page)
        assert src.is_file(), f"{page}: no source {src}"
    hrefs = [h for h, _ in report.quarto_pages()]
    assert set(hrefs) == set(rendered)
    titles = [t for _, t in report.quarto_pages()]
    assert titles[:2] == ["Paper", "Walkthrough"] and "References" in titles
    # every pipeline notebook has a page
    assert {f"notebooks/{s.notebook}.ipynb" for s in pipeline.STEPS} <= set(rendered)


def test_bibliography_keys_are_sorted_well_formed_and_every_citation_resolves():
    keys = bib_keys()
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert all(re.fullmatch(r"[a-z]+\d{4}[a-z]+", k) for k in keys), keys
    needed = {
        "gao2024scaling",
        "lieberum2024gemma",
        "gemmateam2024gemma",
        "facco2017estimating",
        "levina2004maximum",
        "denti2022generalized",
        "sharma2022scaling",
        "engels2024dark",
        "ansuini2019intrinsic",
        "valeriani2023geometry",
        "sritharan2021computing",
        "bricken2023monosemanticity",
        "cunningham2023sparse",
        "hoffman2014nouturn",
        "vehtari2017practical",
        "zaher2026geometric",
    }
    assert needed <= set(keys)
    cited = set(re.findall(r"@([a-z]+\d{4}[a-z]+)", (ROOT / "index.qmd").read_text()))
    assert cited and cited <= set(keys), cited - set(keys)


def test_paper_sections_embeds_and_variables():
    text = (ROOT / "index.qmd").read_text()
    meta, body = report._front_matter(text)
    assert {"title", "author", "abstract", "bibliography"} <= set(meta)
    heads = re.findall(r"^## (.+?)(?: \{.*\})?$", body, flags=re.M)
    for h in ("Introduction", "Data and SAEs", "Geometry", "Stage 1", "Stage 2", "Transfer", "Floors", "Limitations"):
        assert h in heads
    embeds = report.EMBED.findall(body)
    assert len(embeds) >= 7
    for nb, label in embeds:  # each embed points at a labelled cell of a pipeline notebook source
        src = (ROOT / nb).with_suffix(".py").read_text()
        assert f"#| label: {label}" in src, f"{nb} has no cell labelled {label}"
    for ref in report.FIGREF.findall(body):
        assert ref in {label for _, label in embeds}


def test_shortcodes_fail_loudly_on_unknown_names(tmp_path):
    from geowall.config import load_profile

    cfg = load_profile("smoke")
    with pytest.raises(report.ReportError, match="has no value"):
        report.resolve_shortcodes("{{< var nope.nope >}}", cfg, tmp_path, {})
    with pytest.raises(report.ReportError, match="does not exist"):
        report.resolve_shortcodes("{{< embed notebooks/02_geometry.ipynb#fig-x >}}", cfg, tmp_path, {})


@pytest.mark.skipif(report.find_chromium() is None, reason="needs chromium on PATH")
def test_browser_check_serves_nested_pages_and_reports_missing_files(tmp_path):
    # A Quarto site keeps notebook pages in a subfolder; both are served from the site root.
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "index.html").write_text("<html><body><p>paper</p><img src='notebooks/missing.png'></body></html>")
    (tmp_path / "notebooks" / "nb.html").write_text("<html><body><p>notebook</p></body></html>")
    records = report.browser_check([tmp_path / "index.html", tmp_path / "notebooks" / "nb.html"], tmp_path / "screens")
    by_page = {Path(r["page"]).name: r for r in records}
    assert any("404" in f and "missing.png" in f for f in by_page["index.html"]["failed_requests"])
    assert by_page["nb.html"]["failed_requests"] == [] and by_page["nb.html"]["console_errors"] == []
    assert all(Path(r["screenshot"]).stat().st_size > 0 for r in records)


def test_publish_workflow_publishes_the_site_that_its_make_command_builds():
    """The workflow's own command, dry-run through make, runs the default pipeline and then the
    report; the folder it uploads to Pages is where that report lands; the cache holds that run."""
    from geowall.config import load_profile

    wf = yaml.safe_load((ROOT / ".github/workflows/report.yml").read_text())
    steps = wf["jobs"]["report"]["steps"]
    command = next(s["run"] for s in steps if s.get("run", "").startswith("make "))
    dry = subprocess.run([*shlex.split(command), "-n"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = dry.splitlines()
    ran = next(i for i, line in enumerate(lines) if re.search(r"geowall run --profile default\b", line))
    built = next(i for i, line in enumerate(lines) if re.search(r"geowall report --profile default\b.*--browser", line))
    assert ran < built
    default = load_profile("default")
    uploaded = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert ROOT / uploaded["with"]["path"] == report.site_dir(default)
    deploy = next(s for s in steps if s.get("uses", "").startswith("actions/deploy-pages@"))
    run_step = next(s for s in steps if s.get("run") == command)
    assert steps.index(run_step) < steps.index(uploaded) < steps.index(deploy)
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    cached = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))["with"]["path"]
    assert ROOT / cached == pipeline.run_dir_for(default)
    # the executed notebooks the site is made from are inside the cached run folder
    assert pipeline.output_path(pipeline.STEPS[0], pipeline.run_dir_for(default)).is_relative_to(ROOT / cached)


def test_quarto_project_is_staged_from_the_run_without_scripts_or_machine_paths(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from geowall.config import load_profile

    cfg = load_profile("smoke")
    run_dir = tmp_path / "runs" / "smoke"
    hrefs = [h for h, _ in report.quarto_pages() if h.endswith(".ipynb")]
    with pytest.raises(report.ReportError, match="executed notebooks not found"):
        report.stage_quarto(cfg, run_dir, {}, "<script></script>")
    (run_dir / "notebooks").mkdir(parents=True)
    for href in hrefs:
        cell = new_code_cell(
            f'run_dir = "{run_dir.resolve()}"',
            outputs=[
                new_output(
                    "stream", name="stdout", text=f"wrote {run_dir.resolve()}/x.parquet with {report.ROOT}/lib\n"
                )
            ],
        )
        nbformat.write(new_notebook(cells=[cell]), run_dir / "notebooks" / Path(href).name)
    project = report.stage_quarto(cfg, run_dir, {"glance": "g"}, "<script></script>")
    assert project == run_dir / "quarto"
    qcfg = yaml.safe_load((project / "_quarto.yml").read_text())
    assert (
        qcfg["project"]["output-dir"] == "../site"
        and qcfg["project"]["render"] == yaml.safe_load((ROOT / "_quarto.yml").read_text())["project"]["render"]
    )
    assert sorted(p.name for p in (project / "notebooks").glob("*.ipynb")) == sorted(Path(h).name for h in hrefs)
    for href in hrefs:  # executed notebooks without their scripts, and without this machine's paths
        text = (project / href).read_text()
        assert str(tmp_path) not in text and str(report.ROOT) not in text
        assert "<runs>/smoke/x.parquet" in text and "./lib" in text
    for name in report.PROJECT_FILES + ("_variables.yml", "assets/vega-inline.html"):
        assert (project / name).is_file(), name
    assert yaml.safe_load((project / "_variables.yml").read_text()) == {"glance": "g"}


def test_widget_scripts_from_a_cdn_are_dropped_and_nothing_else(tmp_path):
    head = (
        '<script src="https://cdn.jsdelivr.net/npm/requirejs@2.3.6/require.min.js" integrity="x" '
        'crossorigin="anonymous"></script>\n'
        '<script src="https://cdn.jsdelivr.net/npm/jquery@3.5.1/dist/jquery.min.js" '
        'integrity="y" crossorigin="anonymous" data-relocate-top="true"></script>\n'
        '<script type="application/javascript">'
        "define('jquery', [],function() {return window.jQuery;})</script>\n"
    )
    keep = '<script src="site_libs/quarto-nav/quarto-nav.js"></script><script>var x=1;</script>'
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "p.html").write_text(f"<head>{head}{keep}</head>")
    (tmp_path / "q.html").write_text(f"<head>{keep}</head>")
    assert report.drop_widget_cdn_scripts(tmp_path) == 1
    assert (tmp_path / "a" / "p.html").read_text() == f"<head>{keep}</head>"


def test_the_pdf_format_is_added_to_the_staged_paper_only_and_links_from_its_html_page():
    text = (ROOT / "index.qmd").read_text()
    assert "format:" not in report._front_matter(text)[0]  # the repository's paper builds without LaTeX
    meta, body = report._front_matter(report.with_pdf_format(text))
    assert body == report._front_matter(text)[1]
    assert meta["title"] == report._front_matter(text)[0]["title"]
    assert meta["abstract"] == report._front_matter(text)[0]["abstract"]
    pdf = meta["format"]["pdf"]
    assert pdf["pdf-engine"] == "xelatex" and pdf["mathfont"] == "Latin Modern Math"
    assert {pdf["mainfont"], pdf["sansfont"], pdf["monofont"]} == set(report.PDF_FONTS)
    assert meta["format"]["html"]["format-links"] == [{"format": "pdf", "text": "Download PDF", "icon": "file-pdf"}]


def test_no_latex_means_no_pdf_and_a_pdf_asked_for_says_how_to_get_latex(monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "xelatex" else real(name))
    assert report.pdf_engine() == (None, "no xelatex on PATH")
    with pytest.raises(report.ReportError, match="no xelatex on PATH.*texlive-xetex"):
        report.build("smoke", use_quarto=True, pdf=True, log=lambda *_: None)


def _chart_output():
    import altair as alt
    import pandas as pd

    from geowall import charts

    spec = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_point().encode(x="x:Q", y="y:Q").to_dict()
    bundle = charts._render(spec)
    return spec, bundle


def test_every_chart_carries_a_static_pdf_and_png_rendering():
    import base64

    from geowall import charts

    _, bundle = _chart_output()
    assert base64.b64decode(bundle["application/pdf"])[:5] == b"%PDF-"
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(charts.STATIC_MIMES) <= set(bundle) and "gw-chart" in bundle["text/html"]


def test_published_notebooks_lose_live_progress_and_gain_static_charts():
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from geowall import charts

    spec, bundle = _chart_output()
    old_chart = {k: v for k, v in bundle.items() if k not in charts.STATIC_MIMES}  # a run from before
    table = "<table class='dataframe'><tr><td>1</td></tr></table>"
    cell = new_code_cell(
        "fit()",
        outputs=[
            new_output("display_data", data={"text/html": "<style>\n .nutpie { max-width: 800px; }\n</style>"}),
            new_output(
                "display_data",
                data={"text/html": '<div class="nutpie"><p><strong>Sampler Progress</strong></p></div>'},
            ),
            new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}),
            new_output("stream", name="stderr", text="100%|##########| 10/10 [00:01<00:00, 9.5it/s]\n"),
            new_output("stream", name="stdout", text="kept\n"),
            new_output("execute_result", data={"text/html": table}),
            new_output("display_data", data=old_chart),
            new_output("display_data", data=bundle),
        ],
    )
    nb = new_notebook(cells=[cell])
    assert report.publishable_notebook(nb) == {"progress displays dropped": 4, "static chart renderings added": 1}
    outs = nb.cells[0].outputs
    assert [o.get("text") or next(iter(o["data"])) for o in outs] == ["kept\n", "text/html", "text/html", "text/html"]
    assert all(set(charts.STATIC_MIMES) <= set(o["data"]) for o in outs[2:])
    assert outs[3]["data"]["application/pdf"] == bundle["application/pdf"]  # a stored rendering is kept


def test_exponent_and_floor_figures_draw_no_empty_panel_and_say_why():
    import numpy as np
    import pandas as pd

    from geowall import charts
    from geowall.config import load_profile

    cfg = load_profile("smoke")
    rows = []
    for i, m in enumerate(cfg.models):
        for layer in cfg.layers_of(m):
            term = i == 0 and layer == cfg.layers_of(m)[0]
            rows.append(
                dict(model=m.name, layer=layer, form="additive", primary=True, alpha_mean=0.3, alpha_hdi_3=0.2,
                     alpha_hdi_97=0.4, floor_term=term, floor_identified=term, floor_mean=0.1 if term else np.nan,
                     floor_hdi_3=0.05 if term else np.nan, floor_hdi_97=0.15 if term else np.nan)
            )  # fmt: skip
    exps = pd.DataFrame(rows)
    spec = charts.exponents_depth(exps, cfg).to_dict()
    alpha_panel, floor_panel = spec["vconcat"]
    others = [m.name for m in cfg.models[1:]]
    assert floor_panel["facet"]["sort"] == [cfg.models[0].name]
    assert all(m in floor_panel["title"]["subtitle"][0] for m in others)
    assert alpha_panel["resolve"]["scale"]["y"] == "independent"  # each model on its own scale
    none = charts.exponents_depth(exps.assign(floor_mean=np.nan), cfg).to_dict()
    assert len(none["vconcat"]) == 1 and "No floor panel" in none["vconcat"][0]["title"]["subtitle"]
    fl = pd.DataFrame(
        dict(row_type="floor", model="m", layer=[1, 2], floor_mean=0.1, floor_hdi_3=0.0, floor_hdi_97=0.2,
             curvature=np.nan, id_twonn=[5.0, 9.0])
    )  # fmt: skip
    floors = charts.floors(fl).to_dict()
    assert len(floors["hconcat"]) == 1 and "curvature" in floors["title"]["subtitle"][0]
    titles = [c["layer"][0]["encoding"]["x"]["title"] for c in floors["hconcat"]]
    assert titles == [charts.SUMMARY_UNITS["id_twonn"]]

"""The report's sources hold together without Quarto: project file, citations, shortcodes."""
import re
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
        src = ROOT / (page[:-len(".ipynb")] + ".py" if page.endswith(".ipynb") else page)
        assert src.is_file(), f"{page}: no source {src}"
    hrefs = [h for h, _ in report.quarto_pages()]
    assert set(hrefs) == set(rendered)
    assert [t for _, t in report.quarto_pages()][:2] == ["Paper", "Walkthrough"] and "References" in dict(report.quarto_pages()).values()
    # every pipeline notebook has a page
    assert {f"notebooks/{s.notebook}.ipynb" for s in pipeline.STEPS} <= set(rendered)


def test_bibliography_keys_are_sorted_well_formed_and_every_citation_resolves():
    keys = bib_keys()
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert all(re.fullmatch(r"[a-z]+\d{4}[a-z]+", k) for k in keys), keys
    needed = {"gao2024scaling", "lieberum2024gemma", "gemmateam2024gemma", "facco2017estimating",
              "levina2004maximum", "denti2022generalized", "sharma2022scaling", "engels2024dark",
              "ansuini2019intrinsic", "valeriani2023geometry", "sritharan2021computing", "bricken2023monosemanticity",
              "cunningham2023sparse", "hoffman2014nouturn", "vehtari2017practical", "zaher2026geometric"}
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


def test_publish_workflow_renders_default_report_and_publishes_to_gh_pages():
    wf = yaml.safe_load((pipeline.ROOT / ".github/workflows/report.yml").read_text())
    steps = wf["jobs"]["report"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert "quarto-dev/quarto-actions/setup@v2" in uses
    publish = next(s for s in steps if s.get("uses") == "quarto-dev/quarto-actions/publish@v2")
    assert publish["with"] == {"target": "gh-pages", "render": False}
    assert publish["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert wf["permissions"]["contents"] == "write"
    # the report is built before publishing, by the Makefile target the README documents
    run = [s for s in steps if "run" in s]
    assert len(run) == 1 and run[0]["run"].startswith("make report")
    assert steps.index(run[0]) < steps.index(publish)
    makefile = (pipeline.ROOT / "Makefile").read_text()
    assert re.search(r"^report:", makefile, re.M) and "TORCH_INDEX" in makefile
    cached = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))["with"]["path"]
    assert "data/runs/default" in cached and "notebooks/*.ipynb" in cached

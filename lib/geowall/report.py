"""Build the report: Quarto when it is installed, an offline HTML build otherwise.

``geowall report --profile P`` (any profile):

1. collects every number the paper quotes from the run's artefacts
   (:mod:`geowall.results`; the paper uses ``{{< var key >}}``; nothing is typed by hand);
2. if ``quarto`` is on PATH: stages a Quarto project under ``<run_dir>/quarto/``
   (:func:`stage_quarto`): the project files of the repository (``_quarto.yml``, the
   ``.qmd`` pages, the bibliography), ``_variables.yml``, the Vega JavaScript (inlined once
   per page, so charts draw with no network) and the run's executed notebooks
   (``<run_dir>/notebooks/*.ipynb``, with this machine's paths made relative). The
   notebooks sit there without their percent scripts: beside a ``NN.py``, Quarto treats an
   ``.ipynb`` as that script's intermediate file and leaves it out of the site. Then
   ``quarto render`` -> ``<run_dir>/site/``;
3. otherwise the offline build -> ``<run_dir>/site/``: each page listed in
   ``_quarto.yml`` is rendered from its executed notebook with nbconvert (basic
   template, wrapped in a page with a navigation bar); the paper page ``index.qmd`` is
   converted with pandoc (``pypandoc-binary``, ``--citeproc``) after its Quarto
   shortcodes are resolved: ``{{< var >}}`` from the variables, ``{{< embed nb#fig-x >}}``
   by the labelled cell's stored output, ``@fig-x`` by a numbered link.
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import yaml

from geowall.config import Profile, load_profile
from geowall.io import atomic_path
from geowall.pipeline import ROOT, portable_run_dir, run_dir_for

EMBED = re.compile(r"\{\{<\s*embed\s+([^#\s]+)#([\w-]+)\s*>\}\}")
VAR = re.compile(r"\{\{<\s*var\s+([\w.-]+)\s*>\}\}")
FIGREF = re.compile(r"@(fig-[\w-]+)")


class ReportError(RuntimeError):
    pass


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def quarto_pages(root: Path = ROOT) -> list[tuple[str, str]]:
    """(href, title) of every page in the navbar of ``_quarto.yml``, in order."""
    cfg = yaml.safe_load((root / "_quarto.yml").read_text())
    pages: list[tuple[str, str]] = []

    def walk(items):
        for it in items:
            if "menu" in it:
                walk(it["menu"])
            else:
                pages.append((it["href"], it.get("text", it["href"])))

    walk(cfg["website"]["navbar"]["left"])
    return pages


def notebook_source(href: str, cfg: Profile, run_dir: Path) -> Path:
    """The executed notebook behind a page of the site: ``<run_dir>/notebooks/<name>.ipynb``."""
    return run_dir / "notebooks" / Path(href).name


def labelled_cells(nb) -> dict[str, dict]:
    """``fig-...`` label -> {"caption", "html"} from a notebook's cell options and outputs."""
    out = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        opts = dict(re.findall(r"^#\|\s*([\w-]+):\s*(.*)$", cell.source, flags=re.M))
        label = opts.get("label")
        if not label:
            continue
        cap = opts.get("fig-cap", "").strip().strip('"')
        parts = []
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "text/html" in data:
                parts.append(data["text/html"] if isinstance(data["text/html"], str) else "".join(data["text/html"]))
            elif "image/svg+xml" in data:
                parts.append("".join(data["image/svg+xml"]))
            elif "image/png" in data:
                parts.append(f'<img src="data:image/png;base64,{data["image/png"]}"/>')
        out[label] = {"caption": cap, "html": "\n".join(parts)}
    return out


def build(
    profile: str | Profile = "default",
    *,
    runs_dir: Path | None = None,
    use_quarto: bool | None = None,
    pdf: bool | None = None,
    log=print,
) -> Path:
    """Build the site of a profile's run into ``<run_dir>/site/`` (Quarto if on PATH, else offline).

    With Quarto and a LaTeX engine (:func:`pdf_engine`), the paper is also rendered as a PDF,
    ``<site>/index.pdf``, linked from the paper page ("Download PDF"); ``pdf=False`` skips it,
    ``pdf=True`` requires it (a :class:`ReportError` if no engine is found). Each stage is
    logged as it starts and with its time when it ends.
    """
    from geowall import charts
    from geowall.io import flatten
    from geowall.results import report_variables

    cfg = profile if isinstance(profile, Profile) else load_profile(profile)
    run_dir = run_dir_for(cfg, runs_dir)
    t_all = time.time()
    if use_quarto is None:
        use_quarto = shutil.which("quarto") is not None
    engine, why = pdf_engine() if use_quarto else (None, "the offline build makes no PDF")
    if pdf and engine is None:
        raise ReportError(f"a PDF was asked for but {why}. {LATEX_HINT}")
    log(f"[report] numbers quoted by the paper, from the artefacts in {run_dir} ...")
    nested = report_variables(cfg, run_dir)
    vega = charts.vega_script()
    site = site_dir(cfg, runs_dir)
    shutil.rmtree(site, ignore_errors=True)  # derived: never mix pages of the two builds
    if not use_quarto:
        offline_build(cfg, run_dir, site, flatten(nested), vega)
        log(f"[report] offline report (Quarto not found on PATH): {site / 'index.html'}")
        return site
    make_pdf = engine is not None and pdf is not False
    log(f"[report] staging the Quarto project under {run_dir / 'quarto'} ...")
    project = stage_quarto(cfg, run_dir, nested, vega, pdf=make_pdf, log=log)
    log("[report] quarto render --to html (the website) ...")
    t0 = time.time()
    subprocess.run(["quarto", "render", "--to", "html"], cwd=project, check=True)
    drop_widget_cdn_scripts(site)
    log(f"[report] website: {len(list(site.rglob('*.html')))} pages in {time.time() - t0:.0f} s -> {site}")
    if make_pdf:
        log(f"[report] quarto render index.qmd --to pdf ({engine}) ...")
        t0 = time.time()
        out = render_pdf(project, site)
        log(f"[report] PDF: {pdf_pages(out)} pages in {time.time() - t0:.0f} s -> {out}")
    else:
        log(f"[report] PDF skipped: {why or 'pdf=False'}. {LATEX_HINT}")
    log(f"[report] done in {time.time() - t_all:.0f} s: {site / 'index.html'}")
    return site


# ------------------------------------------------------------------------ the paper as a PDF

LATEX_HINT = (
    "To get the PDF too, install XeLaTeX and the fonts (Debian/Ubuntu: apt-get install "
    "--no-install-recommends texlive-xetex texlive-fonts-recommended fonts-lmodern fonts-dejavu; see the README)"
)
# The PDF's LaTeX settings, added to the staged index.qmd (never to the repository's) when an
# engine is present. XeLaTeX with system OpenType fonts: LuaLaTeX's font loader fails on
# Debian's Latin Modern and pdfLaTeX stops at the first Greek letter of the notebooks' text.
PDF_FORMAT = {
    "pdf-engine": "xelatex",
    "documentclass": "scrartcl",
    "papersize": "a4",
    "geometry": ["margin=2.2cm"],
    "fontsize": "10pt",
    # Quarto's template loads the Type 1 lmodern package unless a font family is named;
    # fontspec (loaded anyway by unicode-math under XeLaTeX) saves that package
    "fontfamily": "fontspec",
    "mainfont": "DejaVu Serif",
    "sansfont": "DejaVu Sans",
    "monofont": "DejaVu Sans Mono",
    "mathfont": "Latin Modern Math",
    "colorlinks": True,
    "link-citations": True,
    "fig-pos": "htbp",
    "number-sections": False,
}
PDF_FONTS = ("DejaVu Serif", "DejaVu Sans", "DejaVu Sans Mono")


def pdf_engine() -> tuple[str | None, str]:
    """(``"xelatex"``, "") when XeLaTeX and the PDF's fonts are installed, else (None, why not).

    The fonts are looked up as XeLaTeX does: DejaVu through fontconfig (``fc-list``), Latin
    Modern Math through fontconfig or the TeX tree (``kpsewhich latinmodern-math.otf``)."""
    if shutil.which("xelatex") is None:
        return None, "no xelatex on PATH"
    fc = shutil.which("fc-list")
    if fc:
        families = subprocess.run([fc, ":", "family"], capture_output=True, text=True).stdout
        have = {f.strip() for line in families.splitlines() for f in line.split(",")}
        missing = [f for f in PDF_FONTS if f not in have]
        if missing:
            return None, f"fonts {missing} not installed (Debian: fonts-dejavu)"
        math_found = "Latin Modern Math" in have
    else:
        math_found = False
    if not math_found and shutil.which("kpsewhich"):
        found = subprocess.run(["kpsewhich", "latinmodern-math.otf"], capture_output=True, text=True).stdout
        math_found = bool(found.strip())
    if not math_found:
        return None, "font Latin Modern Math not installed (Debian: fonts-lmodern)"
    return "xelatex", ""


def with_pdf_format(qmd: str) -> str:
    """A page's source with the PDF format added to its front matter, and the HTML page's
    link to it labelled "Download PDF"."""
    meta, body = _front_matter(qmd)
    fmt = dict(meta.get("format") or {})
    fmt.setdefault("html", {})
    if fmt["html"] == "default":
        fmt["html"] = {}
    fmt["html"] = {**fmt["html"], "format-links": [{"format": "pdf", "text": "Download PDF", "icon": "file-pdf"}]}
    fmt["pdf"] = {**PDF_FORMAT, **(fmt.get("pdf") or {})}
    meta["format"] = fmt
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=10_000)
    return f"---\n{front}---\n{body}"


def render_pdf(project: Path, site: Path) -> Path:
    """``quarto render index.qmd --to pdf`` in a staged project; the PDF lands in ``site``."""
    proc = subprocess.run(["quarto", "render", "index.qmd", "--to", "pdf"], cwd=project, capture_output=True, text=True)
    out = site / "index.pdf"
    if proc.returncode != 0 or not out.is_file():
        log_file = project / "pdf-render.log"
        log_file.write_text(proc.stdout + proc.stderr)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ReportError(f"the PDF did not render (exit {proc.returncode}; full log {log_file}):\n{tail}")
    return out


def pdf_pages(pdf: Path) -> int | str:
    """Page count of a PDF (``pdfinfo``), or "?" without poppler."""
    if shutil.which("pdfinfo") is None:
        return "?"
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
    m = re.search(r"^Pages:\s+(\d+)", info, flags=re.M)
    return int(m.group(1)) if m else "?"


def site_dir(cfg: Profile, runs_dir: Path | None = None) -> Path:
    """Where :func:`build` puts the site of a profile (both builds): ``<run_dir>/site``."""
    return run_dir_for(cfg, runs_dir) / "site"


PROJECT_FILES = ("index.qmd", "references.qmd", "references.bib", "assets/offline.scss")


def stage_quarto(cfg: Profile, run_dir: Path, variables: dict, vega: str, *, pdf: bool = False, log=None) -> Path:
    """Lay out the Quarto project of a run under ``<run_dir>/quarto/`` and return that folder.

    It holds the repository's ``_quarto.yml`` (with ``output-dir: ../site``), the pages and
    bibliography, ``_variables.yml`` (nested ``variables``), ``assets/vega-inline.html`` and
    every executed notebook the navbar lists, copied from ``<run_dir>/notebooks/`` with
    machine-specific paths replaced (:func:`portable_notebook`), live progress displays
    dropped and a static rendering beside every chart (:func:`publishable_notebook`). With
    ``pdf``, the staged ``index.qmd`` also declares the PDF format (:func:`with_pdf_format`). Raises
    :class:`ReportError` naming a notebook that has not been executed yet.
    """
    project = run_dir / "quarto"
    qcfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    qcfg["project"]["output-dir"] = "../site"
    notebooks = [href for href in qcfg["project"]["render"] if href.endswith(".ipynb")]
    missing = [href for href in notebooks if not notebook_source(href, cfg, run_dir).is_file()]
    if missing:
        raise ReportError(
            f"pages {missing}: executed notebooks not found under {run_dir / 'notebooks'} "
            f"(run `geowall run --profile {cfg.name}`)"
        )
    shutil.rmtree(project / "notebooks", ignore_errors=True)
    (project / "notebooks").mkdir(parents=True)
    _write_text(project / "_quarto.yml", yaml.safe_dump(qcfg, sort_keys=False, allow_unicode=True))
    for name in PROJECT_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, project / name)
    # Quarto resolves the theme's path from each input's folder: the notebook pages look for it there
    (project / "notebooks" / "assets").mkdir()
    shutil.copyfile(ROOT / "assets" / "offline.scss", project / "notebooks" / "assets" / "offline.scss")
    _write_text(project / "_variables.yml", yaml.safe_dump(variables, sort_keys=True, allow_unicode=True))
    _write_text(project / "assets" / "vega-inline.html", vega + "\n")
    if pdf:
        _write_text(project / "index.qmd", with_pdf_format((ROOT / "index.qmd").read_text()))
        # Quarto's callout boxes load fontawesome5 (Debian: only in the 500 MB texlive-fonts-extra)
        shutil.copyfile(ROOT / "assets" / "fontawesome5.sty", project / "fontawesome5.sty")
    for href in notebooks:
        nb = nbformat.reads(portable_notebook(notebook_source(href, cfg, run_dir).read_text(), run_dir), as_version=4)
        done = publishable_notebook(nb)
        if log and any(done.values()):
            log(f"[report]   {href}: " + ", ".join(f"{v} {k}" for k, v in done.items() if v))
        _write_text(project / href, nbformat.writes(nb))
    return project


# nutpie's live table (a <div class="nutpie"> headed "Sampler Progress") and its <style> output
NUTPIE_PROGRESS = re.compile(r"Sampler Progress|class=\"nutpie\"|\.nutpie\b")
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def is_live_progress(output) -> bool:
    """An output that is a live progress display: a tqdm bar (text or widget), a Jupyter
    widget, or nutpie's "Sampler Progress" table of chains, draws and step sizes."""
    from geowall.pipeline import is_progress_output

    if is_progress_output(output):
        return True
    data = output.get("data", {})
    if any(m in data for m in WIDGET_MIMES):
        return True
    html_text = data.get("text/html", "")
    html_text = html_text if isinstance(html_text, str) else "".join(html_text)
    return bool(NUTPIE_PROGRESS.search(html_text)) and "gw-chart" not in html_text


def publishable_notebook(nb) -> dict[str, int]:
    """Make an executed notebook fit to publish, in place: drop live progress displays
    (:func:`is_live_progress`) and give every Altair chart output a static rendering
    (:func:`geowall.charts.static_renderings`) if the run did not store one (notebooks
    executed before the renderer emitted them). Returns the counts of each change."""
    from geowall import charts

    dropped = added = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for o in cell.get("outputs", []):
            if is_live_progress(o):
                dropped += 1
                continue
            data = o.get("data", {})
            spec = next((v for k, v in data.items() if k.startswith("application/vnd.vegalite.")), None)
            if spec is not None and not all(m in data for m in charts.STATIC_MIMES):
                for mime, value in charts.static_renderings(spec).items():
                    data.setdefault(mime, value)
                added += 1
            kept.append(o)
        cell.outputs = kept
    return {"progress displays dropped": dropped, "static chart renderings added": added}


WIDGET_CDN = re.compile(
    r'<script src="https://cdn\.jsdelivr\.net/npm/(?:requirejs|jquery)@[^"]*"[^>]*></script>\n?'
    r"|<script type=\"application/javascript\">"
    r"define\('jquery', \[\],function\(\) \{return window\.jQuery;\}\)</script>\n?"
)


def drop_widget_cdn_scripts(site: Path) -> int:
    """Remove the require.js and jQuery that Quarto loads from a CDN into every page with HTML output.

    Quarto adds them for JavaScript widgets (itables, plotly) whenever a notebook has a
    ``text/html`` output; our charts draw with the inlined Vega and need neither, and a
    page must load with no network. Returns the number of pages changed.
    """
    changed = 0
    for page in site.rglob("*.html"):
        text = page.read_text()
        new = WIDGET_CDN.sub("", text)
        if new != text:
            mode = page.stat().st_mode
            _write_text(page, new)
            page.chmod(mode)  # a web server must still read it
            changed += 1
    return changed


def machine_paths(run_dir: Path) -> list[tuple[str, str]]:
    """(this machine's path, what a published page shows instead), longest first."""
    runs = run_dir.resolve().parent
    pairs = {
        str(runs): portable_run_dir(runs) if runs.is_relative_to(ROOT) else "<runs>",
        str(ROOT): ".",
        sys.prefix: "<python>",
        sys.base_prefix: "<python>",
    }
    home = str(Path.home())
    if home not in ("/", ""):
        pairs[home] = "~"
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


def portable_notebook(text: str, run_dir: Path) -> str:
    """An executed notebook's JSON with the absolute paths of this machine made relative."""
    for path, shown in machine_paths(run_dir):
        text = text.replace(path, shown)
    return text


# ------------------------------------------------------------------------ offline build

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:0 auto;
  padding:0 1em 4em;line-height:1.55;color:#222}
nav{position:sticky;top:0;background:#f7f7f9;border-bottom:1px solid #ddd;padding:.5em 0;margin-bottom:1.5em;
  font-size:.92em}
nav a{margin-right:1em;text-decoration:none;color:#2361a3} nav a.active{font-weight:600;color:#111}
pre,code{background:#f5f5f5;font-size:.88em} pre{padding:.6em;overflow-x:auto}
figure{margin:1.5em 0} figcaption{font-size:.9em;color:#555;margin-top:.4em}
table{border-collapse:collapse;font-size:.88em} td,th{border:1px solid #ddd;padding:.2em .5em}
.jp-InputPrompt,.jp-OutputPrompt{display:none} .gw-chart{overflow-x:auto}
"""


def _page(title: str, body: str, nav: str, vega: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>\n{vega}\n</head>\n"
        f"<body>{nav}\n<main>\n{body}\n</main></body></html>\n"
    )


def _out_name(href: str) -> str:
    return Path(href).with_suffix(".html").name


def _nav(pages: list[tuple[str, str]], current: str) -> str:
    links = [
        f'<a href="{_out_name(h)}"{" class=active" if h == current else ""}>{html.escape(t)}</a>' for h, t in pages
    ]
    return "<nav>" + "".join(links) + "</nav>"


def offline_build(cfg: Profile, run_dir: Path, site: Path, variables: dict, vega: str) -> list[Path]:
    from nbconvert import HTMLExporter

    pages = quarto_pages()
    site.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="basic")
    written = []
    for href, title in pages:
        if href.endswith(".ipynb"):
            src = notebook_source(href, cfg, run_dir)
            if not src.is_file():
                raise ReportError(
                    f"page {href}: executed notebook {src} not found (run `geowall run --profile {cfg.name}`)"
                )
            nb = nbformat.read(src, as_version=4)
            body, _ = exporter.from_notebook_node(nb)
        elif href == "index.qmd":
            body = paper_html(cfg, run_dir, variables)
        else:
            body = qmd_html(ROOT / href)
        path = site / _out_name(href)
        _write_text(path, _page(title, body, _nav(pages, href), vega))
        written.append(path)
    return written


def _front_matter(text: str) -> tuple[dict, str]:
    m = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    if not m:
        return {}, text
    return yaml.safe_load(m.group(1)) or {}, text[m.end() :]


def resolve_shortcodes(body: str, cfg: Profile, run_dir: Path, variables: dict) -> str:
    """Replace Quarto shortcodes and figure cross-references with plain Markdown/HTML."""

    def var(m):
        key = m.group(1)
        if key not in variables:
            raise ReportError(f"index.qmd: {{{{< var {key} >}}}} has no value in _variables.yml")
        return str(variables[key])

    body = VAR.sub(var, body)
    cache: dict[str, dict] = {}
    numbers: dict[str, int] = {}

    def embed(m):
        href, label = m.group(1), m.group(2)
        if href not in cache:
            src = notebook_source(href, cfg, run_dir)
            if not src.is_file():
                raise ReportError(f"index.qmd embeds {href}#{label} but {src} does not exist")
            cache[href] = labelled_cells(nbformat.read(src, as_version=4))
        if label not in cache[href]:
            raise ReportError(f"index.qmd embeds {href}#{label}: no cell labelled {label} in {href}")
        numbers[label] = len(numbers) + 1
        cell = cache[href][label]
        return (
            f'\n<figure id="{label}">\n{cell["html"]}\n<figcaption>Figure {numbers[label]}: '
            f"{html.escape(cell['caption'])}</figcaption>\n</figure>\n"
        )

    body = EMBED.sub(embed, body)

    def ref(m):
        label = m.group(1)
        if label not in numbers:
            raise ReportError(f"index.qmd refers to @{label}, which is not an embedded figure")
        return f"[Figure {numbers[label]}](#{label})"

    return FIGREF.sub(ref, body)


def _pandoc(markdown: str, meta: dict) -> str:
    import pypandoc

    args = [
        "--citeproc",
        f"--bibliography={ROOT / 'references.bib'}",
        "--metadata=link-citations:true",
        "--section-divs",
    ]
    for k, v in meta.items():
        args.append(f"--metadata={k}:{v}")
    return pypandoc.convert_text(markdown, "html5", format="markdown", extra_args=args)


def paper_html(cfg: Profile, run_dir: Path, variables: dict) -> str:
    meta, body = _front_matter((ROOT / "index.qmd").read_text())
    body = resolve_shortcodes(body, cfg, run_dir, variables)
    head = f"<h1>{html.escape(str(meta.get('title', '')))}</h1>\n"
    if meta.get("subtitle"):
        head += f"<p><em>{html.escape(str(meta['subtitle']))}</em></p>\n"
    if meta.get("abstract"):
        abstract = VAR.sub(lambda m: str(variables.get(m.group(1), m.group(0))), str(meta["abstract"]))
        head += f"<section class=abstract><h2>Abstract</h2>{_pandoc(abstract, {})}</section>\n"
    return head + _pandoc(body, {})


def qmd_html(path: Path) -> str:
    meta, body = _front_matter(path.read_text())
    extra = {}
    if "nocite" in meta:
        extra["nocite"] = meta["nocite"].strip()
    return f"<h1>{html.escape(str(meta.get('title', '')))}</h1>\n" + _pandoc(body, extra)


# ------------------------------------------------------------------------ browser check

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on a free local port for the duration; yield the base URL.

    Pages are checked as a reader sees them, served rather than opened as file:// URLs:
    Quarto's site search and other fetches of site files fail under file://.
    """
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def browser_check(pages: list[Path], screens: Path, *, timeout_ms: int = 30000) -> list[dict]:
    """Open each page in headless Chromium, screenshot it, and count drawn charts.

    The pages are served over local HTTP from their common folder. Returns one record
    per page: charts (``.gw-chart`` divs), drawn (those holding a non-empty SVG or
    canvas), citations (in-text links to the bibliography), bib_entries (bibliography
    entries), unresolved_refs (cross-references or citations left as ``?@key``, as
    Quarto and pandoc mark them), failed_requests, console_errors, screenshot path; the
    records are also written to ``screens/pages.json``. Uses Playwright's Python driver
    with the system Chromium (no browser download).
    """
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise ReportError("no chromium on PATH (Debian: apt-get install chromium)")
    screens.mkdir(parents=True, exist_ok=True)
    records = []
    pages = [Path(p).resolve() for p in pages]
    root = Path(os.path.commonpath([p.parent for p in pages]))
    with serve(root) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            for page_path in pages:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                failed, errors = [], []
                page.on("requestfailed", lambda r, failed=failed: failed.append(r.url))
                # HTTP errors count as failed requests; the browser's own favicon probe does not
                page.on(
                    "response",
                    lambda r, failed=failed: (
                        failed.append(f"{r.status} {r.url}")
                        if r.status >= 400 and not r.url.endswith("/favicon.ico")
                        else None
                    ),
                )
                page.on(
                    "console",
                    lambda m, errors=errors: (
                        errors.append(m.text)
                        if m.type == "error" and "favicon.ico" not in (m.location or {}).get("url", "")
                        else None
                    ),
                )
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.goto(base + page_path.relative_to(root).as_posix(), wait_until="load", timeout=timeout_ms)
                n = page.locator(".gw-chart").count()
                if n:
                    page.wait_for_function(
                        "n => [...document.querySelectorAll('.gw-chart')]"
                        ".filter(d => d.querySelector('svg *, canvas')).length >= n",
                        arg=n,
                        timeout=timeout_ms,
                    )
                drawn = page.evaluate(
                    "() => [...document.querySelectorAll('.gw-chart')].filter(d => {"
                    " const s = d.querySelector('svg'); const c = d.querySelector('canvas');"
                    " return (s && s.querySelectorAll('path, rect, line, text').length > 0)"
                    " || (c && c.width > 0); }).length"
                )
                refs = page.evaluate(
                    "() => ({citations: document.querySelectorAll('a[role=doc-biblioref]').length,"
                    " bib_entries: document.querySelectorAll('.csl-entry').length,"
                    " unresolved: [...document.querySelectorAll('.quarto-unresolved-ref, strong, span')]"
                    ".map(e => e.textContent.trim()).filter(t => /^\\?@[\\w-]+$/.test(t))})"
                )
                shot = screens / f"{Path(page_path).stem}.png"
                page.screenshot(path=str(shot), full_page=True)
                records.append(
                    {
                        "page": str(page_path),
                        "charts": n,
                        "drawn": drawn,
                        "citations": refs["citations"],
                        "bib_entries": refs["bib_entries"],
                        "unresolved_refs": sorted(set(refs["unresolved"])),
                        "failed_requests": failed,
                        "console_errors": errors,
                        "screenshot": str(shot),
                    }
                )
                page.close()
        finally:
            browser.close()
    _write_text(screens / "pages.json", json.dumps(records, indent=1) + "\n")
    return records


# ------------------------------------------------------------------------ PDF check

FIG_CAPTION = re.compile(r"^\s*Figure\s+(\d+):", flags=re.M)
HTML_FIG_CAPTION = re.compile(r"<figcaption[^>]*>\s*Figure(?:&nbsp;|\s)+(\d+)", flags=re.S)
UNRESOLVED_CITE = re.compile(r"\?@[\w-]+|\(\s*[a-z]+\d{4}[a-z]+\?\s*\)|\b[a-z]+\d{4}[a-z]+\?")


def pdf_check(pdf: Path, html_page: Path | None = None, pages_dir: Path | None = None, *, dpi: int = 70) -> dict:
    """What a reader of the PDF gets, read back with poppler: pages, figures (numbered
    "Figure N:" captions), "<Altair chart>" placeholders left where a figure should be,
    unresolved citations or cross-references (``?@key``, ``key?``), bibliography entries
    and, given the site's paper page, its figure count to compare. With ``pages_dir``,
    every page is also saved there as a PNG (``pdftoppm``), to look at beside the site's
    screenshots; the record goes to ``pages_dir/pdf.json``."""
    for tool in ("pdftotext", "pdfinfo"):
        if shutil.which(tool) is None:
            raise ReportError(f"no {tool} on PATH (Debian: apt-get install poppler-utils)")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    refs = text[text.rfind("References") :] if "References" in text else ""
    record = {
        "pdf": str(pdf),
        "pages": pdf_pages(pdf),
        "figures": sorted({int(n) for n in FIG_CAPTION.findall(text)}),
        "placeholders": text.count("<Altair chart>"),
        "unresolved": sorted(set(UNRESOLVED_CITE.findall(text))),
        # one entry per paragraph of the reference list that starts with an author and has a year
        "bib_entries": len(re.findall(r"^\s*[A-Z][^\n]*?\b(?:19|20)\d\d[a-z]?\b", refs, flags=re.M)),
    }
    if html_page is not None:
        record["site_figures"] = sorted({int(n) for n in HTML_FIG_CAPTION.findall(Path(html_page).read_text())})
    if pages_dir is not None:
        if shutil.which("pdftoppm") is None:
            raise ReportError("no pdftoppm on PATH (Debian: apt-get install poppler-utils)")
        pages_dir.mkdir(parents=True, exist_ok=True)
        for old in pages_dir.glob("page-*.png"):
            old.unlink()
        subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(pages_dir / "page")], check=True)
        record["page_images"] = [str(p) for p in sorted(pages_dir.glob("page-*.png"))]
        _write_text(pages_dir / "pdf.json", json.dumps(record, indent=1) + "\n")
    return record

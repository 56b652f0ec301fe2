"""Build the report: Quarto when it is installed, an offline HTML build otherwise.

``geowall report --profile P``:

1. collects every number the paper quotes from the run's artefacts
   (:mod:`geowall.results`; the paper uses ``{{< var key >}}``; nothing is typed by hand);
2. if ``quarto`` is on PATH and the profile is ``default`` (the executed notebooks Quarto
   renders are ``notebooks/*.ipynb``): writes them to ``_variables.yml`` and the Vega
   JavaScript (inlined once per page, so charts draw with no network) to
   ``assets/vega-inline.html``, then ``quarto render`` -> ``_site/``;
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
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import nbformat
import yaml

from geowall.config import Profile, load_profile
from geowall.io import atomic_path
from geowall.pipeline import ROOT, run_dir_for

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
    """The executed notebook behind a page of the site for this profile."""
    name = Path(href).name
    if cfg.name == "default":
        return ROOT / href
    return run_dir / "notebooks" / name


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


def build(profile: str | Profile = "default", *, runs_dir: Path | None = None, use_quarto: bool | None = None,
          log=print) -> Path:
    from geowall import charts
    from geowall.results import flatten, report_variables

    cfg = profile if isinstance(profile, Profile) else load_profile(profile)
    run_dir = run_dir_for(cfg, runs_dir)
    nested = report_variables(cfg, run_dir)
    variables = flatten(nested)
    vega = charts.vega_script()
    if use_quarto is None:
        use_quarto = shutil.which("quarto") is not None and cfg.name == "default"
    if use_quarto:
        _write_text(ROOT / "_variables.yml", yaml.safe_dump(nested, sort_keys=True, allow_unicode=True))
        _write_text(ROOT / "assets" / "vega-inline.html", vega + "\n")
        log("quarto render ...")
        subprocess.run(["quarto", "render"], cwd=ROOT, check=True)
        return ROOT / "_site"
    site = run_dir / "site"
    offline_build(cfg, run_dir, site, variables, vega)
    log(f"offline report (Quarto not found on PATH): {site / 'index.html'}")
    return site


# ------------------------------------------------------------------------ offline build

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:0 auto;padding:0 1em 4em;line-height:1.55;color:#222}
nav{position:sticky;top:0;background:#f7f7f9;border-bottom:1px solid #ddd;padding:.5em 0;margin-bottom:1.5em;font-size:.92em}
nav a{margin-right:1em;text-decoration:none;color:#2361a3} nav a.active{font-weight:600;color:#111}
pre,code{background:#f5f5f5;font-size:.88em} pre{padding:.6em;overflow-x:auto}
figure{margin:1.5em 0} figcaption{font-size:.9em;color:#555;margin-top:.4em}
table{border-collapse:collapse;font-size:.88em} td,th{border:1px solid #ddd;padding:.2em .5em}
.jp-InputPrompt,.jp-OutputPrompt{display:none} .gw-chart{overflow-x:auto}
"""


def _page(title: str, body: str, nav: str, vega: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>\n{vega}\n</head>\n"
            f"<body>{nav}\n<main>\n{body}\n</main></body></html>\n")


def _out_name(href: str) -> str:
    return Path(href).with_suffix(".html").name


def _nav(pages: list[tuple[str, str]], current: str) -> str:
    links = [f'<a href="{_out_name(h)}"{" class=active" if h == current else ""}>{html.escape(t)}</a>' for h, t in pages]
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
                raise ReportError(f"page {href}: executed notebook {src} not found (run `geowall run --profile {cfg.name}`)")
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
    return yaml.safe_load(m.group(1)) or {}, text[m.end():]


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
        return (f'\n<figure id="{label}">\n{cell["html"]}\n<figcaption>Figure {numbers[label]}: '
                f'{html.escape(cell["caption"])}</figcaption>\n</figure>\n')

    body = EMBED.sub(embed, body)

    def ref(m):
        label = m.group(1)
        if label not in numbers:
            raise ReportError(f"index.qmd refers to @{label}, which is not an embedded figure")
        return f"[Figure {numbers[label]}](#{label})"

    return FIGREF.sub(ref, body)


def _pandoc(markdown: str, meta: dict) -> str:
    import pypandoc

    args = ["--citeproc", f"--bibliography={ROOT / 'references.bib'}", "--metadata=link-citations:true",
            "--section-divs"]
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

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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
    canvas), failed_requests, console_errors, screenshot path. Uses Playwright's Python
    driver with the system Chromium (no browser download).
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
                page.on("response", lambda r, failed=failed: failed.append(f"{r.status} {r.url}")
                        if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
                page.on("console", lambda m, errors=errors: errors.append(m.text)
                        if m.type == "error" and "favicon.ico" not in (m.location or {}).get("url", "") else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.goto(base + page_path.relative_to(root).as_posix(), wait_until="load", timeout=timeout_ms)
                n = page.locator(".gw-chart").count()
                if n:
                    page.wait_for_function(
                        "n => [...document.querySelectorAll('.gw-chart')].filter(d => d.querySelector('svg *, canvas')).length >= n",
                        arg=n, timeout=timeout_ms)
                drawn = page.evaluate(
                    "() => [...document.querySelectorAll('.gw-chart')].filter(d => {"
                    " const s = d.querySelector('svg'); const c = d.querySelector('canvas');"
                    " return (s && s.querySelectorAll('path, rect, line, text').length > 0) || (c && c.width > 0); }).length")
                shot = screens / f"{Path(page_path).stem}.png"
                page.screenshot(path=str(shot), full_page=True)
                records.append({"page": str(page_path), "charts": n, "drawn": drawn, "failed_requests": failed,
                                "console_errors": errors, "screenshot": str(shot)})
                page.close()
        finally:
            browser.close()
    return records

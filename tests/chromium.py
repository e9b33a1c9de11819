"""Open a report in headless Chromium (Debian's package, which tests/run.sh installs), with the
network cut off, and read back what a person would see: each chart's drawn size, the tables'
cells, console errors, any request that left the file, and a full-page screenshot."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [  # as a root container needs, and with nothing phoning home
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@dataclass
class Rendered:
    charts: list[dict]  # per figure: width, height, and how many marks it drew
    tables: dict[str, list[list[str]]]  # table id or section id -> rows of cell texts
    best: dict[str, list[str]]  # table id -> the row labels of its cells marked best
    errors: list[str]  # console errors and uncaught exceptions
    requests: list[str]  # anything the page asked for beyond its own file
    text: str
    screenshot: Path


def render(page_path: Path, screenshot_name: str) -> Rendered:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run tests/run.sh, or apt-get install chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{screenshot_name}.png"
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def refuse(route) -> None:
                if route.request.url != page_path.as_uri():
                    requests.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            page.route("**/*", refuse)
            page.goto(page_path.as_uri(), wait_until="load")
            charts = page.eval_on_selector_all(
                "figure.chart svg",
                """els => els.map(e => ({width: e.getBoundingClientRect().width,
                    height: e.getBoundingClientRect().height,
                    marks: e.querySelectorAll('path, use, text').length}))""",
            )
            tables = page.eval_on_selector_all(
                "table",
                """els => els.map(t => [t.id || t.closest('section').id,
                    [...t.rows].map(r => [...r.cells].map(c => c.textContent.trim()))])""",
            )
            best = page.eval_on_selector_all(
                "td.best",
                "els => els.map(td => [td.closest('table').id,"
                " td.parentElement.cells[0].textContent])",
            )
            text = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    named: dict[str, list[list[str]]] = {}
    for key, rows in tables:
        named.setdefault(key, []).extend(rows)
    marked: dict[str, list[str]] = {}
    for table, row in best:
        marked.setdefault(table, []).append(row)
    return Rendered(charts, named, marked, errors, requests, text, shot)


def column(rows: list[list[str]], header: str) -> dict[str, str]:
    """first cell -> the cell under `header`, for a table whose first row is its header."""
    i = rows[0].index(header)
    return {r[0]: r[i] for r in rows[1:] if len(r) > i}

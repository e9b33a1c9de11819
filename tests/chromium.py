"""Open a report in headless Chromium (Debian's package, which tests/run.sh installs), with the
network cut off, and read back what a person would see: each chart's drawn size, the tables'
cells, console errors, any request that left the file, and a full-page screenshot."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
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
    cards: list[tuple[str, str, str]] = field(default_factory=list)  # headline, in page order
    blocks: dict[str, str] = field(default_factory=dict)  # element id -> its text as shown


TABLES = """els => els.map(t => [t.id || t.closest('section').id,
    [...t.rows].map(r => [...r.cells].map(c => c.textContent.trim()))])"""
BLOCKS = "els => els.map(e => [e.id, e.innerText])"
CARDS = """els => els.map(c => ['.label', '.value', '.detail'].map(
    k => c.querySelector(k).textContent.trim()))"""


def _read(page) -> dict:
    """What a person sees on the opened page, as Rendered's fields."""
    return {
        "charts": page.eval_on_selector_all(
            "figure.chart svg",
            """els => els.map(e => ({width: e.getBoundingClientRect().width,
                height: e.getBoundingClientRect().height,
                marks: e.querySelectorAll('path, use, text').length}))""",
        ),
        "tables": page.eval_on_selector_all("table", TABLES),
        "best": page.eval_on_selector_all(
            "td.best",
            "els => els.map(td => [td.closest('table').id, td.parentElement.cells[0].textContent])",
        ),
        "cards": [tuple(c) for c in page.eval_on_selector_all(".card", CARDS)],
        "blocks": dict(page.eval_on_selector_all("[id]", BLOCKS)),
        "text": page.inner_text("body"),
    }


def _browse(page_path: Path, errors: list[str], requests: list[str], act) -> object:
    """Open the page in headless Chromium with the network cut off; act(page)'s answer."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run tests/run.sh, or apt-get install chromium")
    from playwright.sync_api import sync_playwright

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
            return act(page)
        finally:
            browser.close()


def render(page_path: Path, screenshot_name: str) -> Rendered:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{screenshot_name}.png"
    errors: list[str] = []
    requests: list[str] = []

    def act(page) -> dict:
        seen = _read(page)
        page.screenshot(path=str(shot), full_page=True)
        return seen

    seen = _browse(page_path, errors, requests, act)
    named: dict[str, list[list[str]]] = {}
    for key, rows in seen["tables"]:
        named.setdefault(key, []).extend(rows)
    marked: dict[str, list[str]] = {}
    for table, row in seen["best"]:
        marked.setdefault(table, []).append(row)
    fields = (seen["charts"], named, marked, errors, requests, seen["text"], shot)
    return Rendered(*fields, seen["cards"], seen["blocks"])


def rows_after_clicks(page_path: Path, clicks: list[tuple[str, str]]) -> list[list[list[str]]]:
    """Click each (table id, heading) in turn, as a person sorting the page's tables would;
    the body rows of that table after each click."""

    def act(page) -> list:
        seen = []
        for table, header in clicks:
            page.locator(f"table#{table} th", has_text=header).first.click()
            seen.append(page.eval_on_selector_all(f"table#{table} tbody tr", CELLS))
        return seen

    return _browse(page_path, [], [], act)


CELLS = "els => els.map(r => [...r.cells].map(c => c.textContent.trim()))"


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.table: list[list[str]] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self.table = self.tables.setdefault(dict(attrs).get("id") or "", [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th") and self.table is not None:
            self.cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self.cell is not None and self.table is not None:
            self.table[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data) -> None:
        if self.cell is not None:
            self.cell.append(data)


def html_tables(html: str) -> dict[str, list[list[str]]]:
    """table id -> rows of cell texts, read from the page's HTML without a browser."""
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def column(rows: list[list[str]], header: str) -> dict[str, str]:
    """first cell -> the cell under `header`, for a table whose first row is its header."""
    i = rows[0].index(header)
    return {r[0]: r[i] for r in rows[1:] if len(r) > i}

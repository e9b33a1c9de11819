"""Every table of the report as CSV that users can take away: a "CSV" link on each table
of the page (a data: URI, so the page stays self-contained) and `rankstudy report --csv DIR`.

Both are read from the rendered page itself, one table (by its id) at a time, each cell as the
page shows it: the CSV cannot disagree with the table, and a table the template gains gets
its CSV with no other change. A cell showing no value ("–") is left empty.
"""

from __future__ import annotations

import base64
import csv
import io
import re
from html.parser import HTMLParser
from pathlib import Path

NO_VALUE = "–"  # build.num's placeholder
_TABLE = re.compile(r'<table\b[^>]*\bid="([^"]+)"[^>]*>')


class _Tables(HTMLParser):
    """table id -> its rows (header, body and footer rows, in page order) of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.rows: list[list[str]] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.rows = self.tables.setdefault(dict(attrs).get("id") or "", [])
        elif tag == "tr" and self.rows is not None:
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            text = " ".join("".join(self.cell).split())
            self.rows[-1].append("" if text == NO_VALUE else text)
            self.cell = None
        elif tag == "table":
            self.rows = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def page_tables(html: str) -> dict[str, list[list[str]]]:
    """Every table of the page that has an id: id -> rows of cell texts."""
    parser = _Tables()
    parser.feed(html)
    parser.close()
    parser.tables.pop("", None)
    return parser.tables


def to_csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def with_downloads(html: str) -> str:
    """The page with a "CSV" link (download <id>.csv) as the caption of each table with an
    id: inside the table, so no layout around it changes."""
    tables = {k: to_csv(rows) for k, rows in page_tables(html).items()}

    def link(match: re.Match) -> str:
        data = base64.b64encode(tables[match[1]].encode()).decode()
        return (
            f'{match[0]}<caption class="csv"><a download="{match[1]}.csv" '
            f'href="data:text/csv;base64,{data}">CSV</a></caption>'
        )

    return _TABLE.sub(link, html)


def write_csvs(html: str, folder: str | Path) -> list[Path]:
    """Each table of the page as <folder>/<id>.csv; the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in page_tables(html).items():
        path = folder / f"{name}.csv"
        path.write_text(to_csv(rows))
        written.append(path)
    return written

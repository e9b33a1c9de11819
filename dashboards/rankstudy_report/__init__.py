"""The comparison report of a rank study, built from MLflow alone (`rankstudy report`)."""

from rankstudy_report.build import build_report
from rankstudy_report.collect import ReportError

__all__ = ["ReportError", "build_report"]

"""``charlab report``: a run's hypothesis verdicts, inertia and figures as one offline HTML page and Markdown."""

from charlab.report.render import ReportPaths, ReportSettings, build_report

__all__ = ["ReportPaths", "ReportSettings", "build_report"]

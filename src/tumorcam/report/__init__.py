"""The report of a run: the paper's figures and more in RUN/figures/, one self-contained RUN/report.html.

`build_report(run) -> Path` reads whatever the run folder holds (a missing stage is shown as
missing, with the command that makes it) and returns the path of report.html.
"""

from tumorcam.report.build import build_report

__all__ = ["build_report"]

"""`assimilax report`: plots and a summary table of a twin-experiment or sweep file."""

from ._args import _Formatter


def _report_parser(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="plots and a summary table of a twin-experiment file",
        formatter_class=_Formatter,
        description=(
            "Write PNG plots (RMSE and spread through time, rank histograms, truth vs "
            "analysis, ESS of particle filters) and summary.md into --out."
        ),
    )
    rep.add_argument("file", help="a netCDF file written by `assimilax twin --out`")
    rep.add_argument("--out", default="report", help="output folder (created if missing)")
    rep.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from .._report import report

    for path in report(args.file, args.out):
        print(path)
    return 0

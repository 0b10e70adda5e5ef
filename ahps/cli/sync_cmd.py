"""``ahps sync``: send to MLflow what a run could not log while the tracking store was unavailable.

Pipeline steps that lose MLflow keep going and journal what they could not log
(:mod:`ahps_core.tracking.journal`); this command replays those journals, without logging anything twice. The
next run of the same run group does the same on its own.
"""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_JOURNAL = Path("ahps_outputs") / "tracking-journal"


@click.command("sync")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store ./mlruns).")
@click.option("--journal", "journal_dir", default=None, metavar="DIR", type=click.Path(file_okay=False),
              help="Journal directory (default: $AHPS_TRACKING_JOURNAL, else ahps_outputs/tracking-journal).")
@click.option("--run-group", default=None, metavar="KEY", help="Replay only this run group.")
def sync_cmd(tracking_uri: str | None, journal_dir: str | None, run_group: str | None) -> None:
    """Replay the tracking journal (what MLflow did not get) into MLflow."""
    import os

    from ahps_core.errors import TrackingError
    from ahps_core.tracking import JOURNAL_ENV, check_tracking_uri, local_store_uri, pending_files, replay

    root = Path(journal_dir or os.environ.get(JOURNAL_ENV) or DEFAULT_JOURNAL)
    files = pending_files(root, run_group)
    if not files:
        click.echo(f"nothing to replay: no tracking journal under {root}")
        return
    uri = check_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri("mlruns"))
    report = replay(uri, root, run_group=run_group, log=lambda line: click.echo(line, err=True))
    click.echo(report.line())
    if report.failed:
        raise TrackingError(f"{len(report.failed)} journal file(s) could not be replayed and are kept: "
                            f"{report.failed[0]}")

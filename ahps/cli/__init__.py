"""The ``ahps`` command.

Subcommands are loaded lazily from their own modules, so cheap commands stay cheap: ``ahps lr`` and
``ahps paths`` import neither torch nor kfp nor mlflow. Each entry of ``COMMANDS`` maps a command name to
``"module:attribute"`` of a click command (or group).

Errors: any :class:`ahps_core.errors.AhpsError` becomes one line on stderr (``error: ...``) and its exit
code; a click usage error keeps click's own message and exit code 2. No traceback reaches the user
unless ``AHPS_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ahps_core.errors import AhpsError, one_line, redact_secrets

COMMANDS: dict[str, str] = {
    "paths": "ahps.cli.scaling_cmds:paths_cmd",
    "lr": "ahps.cli.scaling_cmds:lr_cmd",
    "find-lr": "ahps.cli.train_cmds:find_lr_cmd",
    "validate": "ahps.cli.train_cmds:validate_cmd",
    "train": "ahps.cli.train_cmds:train_cmd",
    "check-init": "ahps.cli.check_cmds:check_init_cmd",
    "bench": "ahps.cli.bench_cmds:bench_group",
    "run": "ahps.cli.pipeline_cmds:run_cmd",
    "compile": "ahps.cli.pipeline_cmds:compile_cmd",
    "submit": "ahps.cli.pipeline_cmds:submit_cmd",
    "schedule": "ahps.cli.pipeline_cmds:schedule_cmd",
    "sync": "ahps.cli.sync_cmd:sync_cmd",
}

HELP = {
    "paths": "Exact input->output path statistics of an architecture graph.",
    "lr": "Transfer a base learning rate to a target architecture.",
    "find-lr": "Find the base (maximal) learning rate on the family's one-hidden-layer proxy.",
    "validate": "Predicted vs measured maximal learning rates over a set of targets.",
    "train": "Train one architecture (autoscaled or fixed recipe).",
    "check-init": "Coordinate check: each vertex's activation second moment at init and after a few steps.",
    "bench": "Benchmarks: path DP vs enumeration, training loop vs naive loop.",
    "run": "Run a pipeline on kfp's local runner (the main job).",
    "compile": "Compile a pipeline to Kubeflow Pipelines IR YAML.",
    "submit": "Submit a pipeline run to a Kubeflow Pipelines host.",
    "schedule": "Create a recurring run on a Kubeflow Pipelines host.",
    "sync": "Replay into MLflow what a run could not log while MLflow was unavailable.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    registry: dict[str, str] = COMMANDS
    help_rows: dict[str, str] = HELP

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.registry)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.registry.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise click.ClickException(f"command {name!r} is not available in this build") from exc
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every subcommand (and with it torch/kfp/mlflow).
        rows = [(name, self.help_rows.get(name, "")) for name in self.registry]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ahps")
def cli() -> None:
    """ahps: find the base LR once on a proxy, transfer it to any architecture, train, rank, track."""


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="ahps", standalone_mode=False)
    except AhpsError as exc:
        if os.environ.get("AHPS_DEBUG"):
            raise
        click.echo(f"error: {_bounded(str(exc))}", err=True)
        return exc.exit_code
    except OSError as exc:  # the environment (a full disk, a read-only or vanished path) the code did not foresee
        if os.environ.get("AHPS_DEBUG"):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {_bounded(one_line(redact_secrets(exc.strerror or str(exc))))}{where}", err=True)
        return OS_ERROR_EXIT
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    # in non-standalone mode click returns a command's Exit code (or the command's return value)
    return code if isinstance(code, int) else 0


#: Exit code of an operating-system error (disk full, read-only file system, ...) no check caught first.
OS_ERROR_EXIT = 1
_MAX_MESSAGE = 2000


def _bounded(text: str) -> str:
    """A message of at most ~2000 characters (a huge bad value is cut in the middle, the reason is kept)."""
    if len(text) <= _MAX_MESSAGE:
        return text
    return f"{text[:_MAX_MESSAGE - 500]} [... {len(text) - _MAX_MESSAGE} characters ...] {text[-500:]}"


def run_main() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

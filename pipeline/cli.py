"""The `relay-impact` command: parse arguments, call the library, map errors to exit codes.

Exit codes: 0 success; 1 a usage, config or input error (one line naming the file and what was
expected); 3 when --fail-on names an impact that some message has (for scheduled alerting).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from . import config as config_mod
from . import ingest as lib_ingest
from .errors import RelayImpactError
from .ingest import registry
from .ingest.base import IngestOptions
from .report import report as lib_report
from .report import terminal_summary
from .report.summary import counted
from .rules import RuleContext, load_pack, pack_names
from .rules import evaluate as lib_evaluate
from .schema import IMPACTS

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    help="Which messages Exchange Online rejects (or will) when on-premises systems relay through it, why, and what to change.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect a tenant config file.")
app.add_typer(config_app, name="config")

EXIT_INPUT = 1
EXIT_ALERT = 3

Logs = Annotated[list[str], typer.Argument(help="Log files, folders, globs, .gz or .zip archives.", show_default=False)]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Tenant config (TOML).", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="WORKDIR for the Parquet datasets and the report.")]
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help="Input format (skip detection); see `relay-impact formats`.")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Host name for logs that do not name the server that wrote them.")]
TzOpt = Annotated[str | None, typer.Option("--tz", help="Time zone of logs written in local time (syslog, Exim), e.g. Europe/Berlin. Default UTC.")]
YearOpt = Annotated[int | None, typer.Option("--year", help="Year of RFC 3164 syslog timestamps (default: from the file's modification time).")]
DayfirstOpt = Annotated[bool | None, typer.Option("--dayfirst/--monthfirst", help="Culture of dates in PowerShell CSV exports (05.09.2026 vs 9/5/2026).", show_default=False)]
DateFmtOpt = Annotated[str | None, typer.Option("--date-format", help="Exact strptime format of dates in PowerShell CSV exports.")]
PackOpt = Annotated[str | None, typer.Option("--pack", help="Rule pack: relay-2023, direct-send-2025, or a pack file (*.toml). Default: rules.pack of the config.")]
FailOnOpt = Annotated[str | None, typer.Option("--fail-on", help="Comma-separated impacts (e.g. newly_rejected,possibly_rejected): exit 3 when any message has one.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Report only messages from this date (2026-11-01) or age (7d, 24h) on.")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Report only messages before this date or age.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Start the WORKDIR over instead of adding to it.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]


def _split(spec: str | None) -> list[str] | None:
    return [f.strip() for f in spec.split(",") if f.strip()] if spec else None


def _fail(message: str, code: int = EXIT_INPUT) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _guard(fn):
    """Run a library call; turn domain errors into one clear line and exit code 1."""
    try:
        return fn()
    except RelayImpactError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


def _options(host, tz, year, dayfirst, date_format) -> IngestOptions:
    zone = None
    if tz:
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            _fail(f"--tz {tz!r}: not a time zone name; expected e.g. UTC or Europe/Berlin")
    return IngestOptions(host=host, tz=zone, year=year, dayfirst=dayfirst, date_format=date_format)


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None

    def show(rows: int) -> None:
        sys.stderr.write(f"\r{rows:,} messages…")
        sys.stderr.flush()

    return show


def _fail_on(spec: str | None) -> list[str]:
    if not spec:
        return []
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [w for w in wanted if w not in IMPACTS]
    if bad:
        _fail(f"--fail-on {','.join(bad)}: expected impacts from: {', '.join(IMPACTS)}")
    return wanted


def _alert(summary: dict, wanted: list[str], quiet: bool) -> None:
    hits = {w: summary["impact"].get(w, 0) for w in wanted if summary["impact"].get(w, 0)}
    if hits:
        if not quiet:
            typer.echo("alert: " + ", ".join(f"{v} {k}" for k, v in hits.items()), err=True)
        raise typer.Exit(EXIT_ALERT)


def _load_config(path: Path, pack: str | None):
    cfg = _guard(lambda: config_mod.load_config(path))
    if pack and pack not in pack_names():
        if not pack.endswith(".toml"):
            _fail(f"--pack {pack!r}: expected one of: {', '.join(pack_names())}, or a pack file (*.toml)")
        _guard(lambda: load_pack(pack))
    return cfg


@app.command()
def run(
    logs: Logs, config: ConfigOpt, out: OutOpt = Path("relay-impact-out"), format: FormatOpt = None,
    host: HostOpt = None, tz: TzOpt = None, year: YearOpt = None, dayfirst: DayfirstOpt = None,
    date_format: DateFmtOpt = None, pack: PackOpt = None,
    report_formats: Annotated[str | None, typer.Option("--report", help="Report formats to write (default: all).")] = None,
    since: SinceOpt = None, until: UntilOpt = None, fail_on: FailOnOpt = None, quiet: QuietOpt = False,
    fresh: FreshOpt = False,
) -> None:
    """Ingest, evaluate and report in one go (the main job). Re-running into the same WORKDIR
    reads only new or grown files.

    Example: relay-impact run sample_logs/ --config sample_logs/tenant.toml --out out
    """
    wanted = _fail_on(fail_on)
    cfg = _load_config(config, pack)
    _guard(lambda: RuleContext.build(cfg, pack))  # refuse before reading logs, not after
    opts = _options(host, tz, year, dayfirst, date_format)
    progress = _progress(quiet)
    read = _guard(lambda: lib_ingest(logs, out, config=cfg, fmt=format, options=opts, progress=progress, fresh=fresh))
    _guard(lambda: lib_evaluate(out, cfg, pack, progress=progress))
    done = _guard(lambda: lib_report(out, _split(report_formats), since=since, until=until))
    if progress:
        sys.stderr.write("\n")
    if not quiet:
        typer.echo(terminal_summary(done["summary"]))
        _echo_not_read(read)
        typer.echo(f"report: {done['dir']}")
    _alert(done["summary"], wanted, quiet)


@app.command()
def ingest(
    logs: Logs, out: OutOpt = Path("relay-impact-out"), format: FormatOpt = None, host: HostOpt = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Tenant config: its [[hosts]] logs globs name hosts; connector ranges mark relayed trace rows.")] = None,
    tz: TzOpt = None, year: YearOpt = None, dayfirst: DayfirstOpt = None, date_format: DateFmtOpt = None,
    quiet: QuietOpt = False, fresh: FreshOpt = False,
) -> None:
    """Parse logs into WORKDIR/messages/ (and WORKDIR/rejects/); adds to what WORKDIR holds,
    reading only new or grown files, unless --fresh.

    Example: relay-impact ingest /var/log/mail.log* --out out --host relay01
    """
    cfg = _load_config(config, None) if config else None
    opts = _options(host, tz, year, dayfirst, date_format)
    summary = _guard(lambda: lib_ingest(logs, out, config=cfg, fmt=format, options=opts, progress=_progress(quiet), fresh=fresh))
    if not quiet:
        t = summary["this_run"]["totals"]
        skipped = summary["this_run"]["files_skipped"]
        before = sum(not why.startswith("not read") for why in skipped.values())
        typer.echo(
            f"{counted(t['files'], 'file')} read ({before} already read before): {t['lines']} lines, "
            f"{t['parsed']} in messages, {t['skipped_lines']} skipped, {t['rejected_lines']} not parsed; "
            f"{counted(summary['messages'], 'message')} in the WORKDIR"
        )
        _echo_not_read(summary)
        typer.echo(f"messages: {out / 'messages'}")


def _echo_not_read(ingest_summary: dict) -> None:
    """Files of a folder that no format recognised: said, so that nothing vanishes unseen."""
    for name, why in ingest_summary["this_run"]["files_skipped"].items():
        if why.startswith("not read"):
            typer.echo(f"skipped {name}: {why}")


@app.command()
def evaluate(
    workdir: Annotated[Path, typer.Argument(help="WORKDIR written by `ingest`.")],
    config: ConfigOpt, pack: PackOpt = None, fail_on: FailOnOpt = None, quiet: QuietOpt = False,
) -> None:
    """Tag every message of WORKDIR/messages with verdicts into WORKDIR/verdicts/.

    Example: relay-impact evaluate out --config tenant.toml --pack direct-send-2025
    """
    wanted = _fail_on(fail_on)
    cfg = _load_config(config, pack)
    _guard(lambda: lib_evaluate(workdir, cfg, pack, progress=_progress(quiet)))
    from .report.summary import build_summary

    summary = _guard(lambda: build_summary(workdir))
    if not quiet:
        typer.echo(terminal_summary(summary))
        typer.echo(f"verdicts: {workdir / 'verdicts'}")
    _alert(summary, wanted, quiet)


@app.command()
def report(
    workdir: Annotated[Path, typer.Argument(help="WORKDIR written by `evaluate`.")],
    format: Annotated[str | None, typer.Option("--format", "-f", help="Comma-separated report formats (default: all).")] = None,
    since: SinceOpt = None, until: UntilOpt = None, fail_on: FailOnOpt = None, quiet: QuietOpt = False,
) -> None:
    """Write WORKDIR/report/ (summary.json always).

    Example: relay-impact report out --format html,md --since 7d
    """
    wanted = _fail_on(fail_on)
    done = _guard(lambda: lib_report(workdir, _split(format), since=since, until=until))
    if not quiet:
        typer.echo(terminal_summary(done["summary"]))
        for f in done["files"]:
            typer.echo(f"wrote {f}")
    _alert(done["summary"], wanted, quiet)


@app.command()
def formats() -> None:
    """List the input formats, in detection order, and how each is detected.

    Example: relay-impact formats
    """
    for module in registry():
        typer.echo(f"{module.NAME:<20} {module.DESCRIPTION}")


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="Tenant config (TOML).")]) -> None:
    """Print what was understood from a tenant config, and its hygiene warnings.

    Example: relay-impact config check sample_logs/tenant.toml
    """
    cfg = _load_config(path, None)
    typer.echo(f"config: {cfg.path}")
    typer.echo("accepted domains:")
    for d in cfg.accepted_domains:
        opts = ", match subdomains" if d.match_subdomains else ""
        typer.echo(f"  {d.name} ({d.domain_type}{opts})")
    typer.echo("inbound connectors:")
    for c in cfg.connectors:
        state = "enabled" if c.enabled else "disabled"
        counts = "counts for relay" if c.counts_for_relay else "does not count for relay"
        ips = ", ".join(r.text for r in c.sender_ip_addresses) or "none"
        cert = c.tls_sender_certificate_name or "none"
        typer.echo(f"  {c.name}: {c.type}, {state} ({counts}); IPs: {ips}; certificate: {cert}")
    typer.echo("hosts:")
    for h in cfg.hosts or ():
        cert = ";".join(h.certificate) or "none"
        logs = f"; logs: {', '.join(h.logs)}" if h.logs else ""
        typer.echo(f"  {h.name}: egress {h.egress_ip or 'unknown'}; certificate: {cert}{logs}")
    if not cfg.hosts:
        typer.echo("  (none)")
    typer.echo(f"relay targets: {', '.join(cfg.relay_targets)}")
    r = cfg.rules
    typer.echo(
        f"rules: pack={r.pack} cert_names={r.cert_names} cert_parent_domain={r.cert_parent_domain} "
        f"unknown_certificate={r.unknown_certificate}"
    )
    if cfg.third_parties:
        typer.echo("third parties: " + "; ".join(f"{t.name} ({', '.join(t.domains)})" for t in cfg.third_parties))
    warnings = config_mod.hygiene_warnings(cfg)
    for w in warnings:
        typer.echo(f"warning: {w}")
    if not warnings:
        typer.echo("no warnings")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

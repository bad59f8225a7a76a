"""`expertmesh log export`: router-training rows from the gateway's decision log."""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from expertmesh.cli.common import ConfigOption, fail, load_or_exit, stderr

log_app = typer.Typer(help="Read the gateway's decision log.", no_args_is_help=True)

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(value: str, now: float | None = None) -> float:
    """Unix seconds from an ISO date or time (UTC unless it names its zone: "2026-12-01",
    "2026-12-01T08:00") or a time ago ("90m", "24h", "7d")."""
    now = time.time() if now is None else now
    if match := _RELATIVE.match(value.strip()):
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"'{value}' is neither an ISO date/time (2026-12-01, 2026-12-01T08:00) nor a time ago (24h, 7d)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@log_app.command("export")
def export(
    since: Annotated[str, typer.Option(help="From: an ISO date/time (UTC) or a time ago (24h, 7d).")],
    out: Annotated[
        Path, typer.Option(help='The JSONL file to write: {"text", "domain", "source", "request_id"} lines.')
    ],
    until: Annotated[str | None, typer.Option(help="Until (default: now); same forms as --since.")] = None,
    min_confidence: Annotated[
        float, typer.Option(min=0, max=1, help="Router decisions at or above this confidence become rows.")
    ] = 0.9,
    url: Annotated[str | None, typer.Option(help="The log's database URL (default: log.url of the config).")] = None,
    config: ConfigOption = None,
) -> None:
    """Training rows for `expertmesh router train --extra-data`: every request someone corrected
    (POST /v1/feedback with a domain), and every router decision at or above --min-confidence
    that succeeded and was not rated down. Needs requests logged with their text (log.store_text)."""
    from expertmesh.gateway.decision_log import open_store, training_rows

    cfg = load_or_exit(config)
    start, end = parse_moment(since), parse_moment(until) if until else time.time()
    if end <= start:
        fail(f"--until ({until}) is not after --since ({since})")
    database = url or cfg.log.database_url()
    try:
        store = open_store(database)
    except Exception as exc:  # noqa: BLE001 - any failure to open: say which database and why
        fail(f"cannot open the decision log at {database}: {exc}")
    try:
        rows = list(training_rows(store, start, end, min_confidence))
        logged = store.query(f"SELECT COUNT(*), COUNT(text) FROM decisions WHERE time >= {store.placeholder} "
                             f"AND time < {store.placeholder}", (start, end))[0]  # fmt: skip
    finally:
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    kinds, domains = Counter(r["source"] for r in rows), Counter(r["domain"] for r in rows)
    console = Console(soft_wrap=True)  # lines a script can read
    console.print(f"{len(rows)} training rows written to {out}: {kinds['traffic_correction']} corrections, "
                  f"{kinds['traffic_decision']} confident decisions (of {logged[0]} requests logged, {logged[1]} with their text)")  # fmt: skip
    if domains:
        console.print("By domain: " + ", ".join(f"{d} {n}" for d, n in domains.most_common()))
    if logged[0] and not logged[1]:
        stderr.print("No request in this period was logged with its text: set log.store_text: true in the config.")

"""`expertmesh router train` and `expertmesh router evaluate`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from expertmesh import paths
from expertmesh.cli.common import ConfigOption, fail, load_or_exit, stderr

router_app = typer.Typer(help="Train and evaluate the router.", no_args_is_help=True)


@router_app.command()
def train(
    config: ConfigOption = None,
    out: Annotated[Path | None, typer.Option(help="Artifact folder (default: router.artifact of the config; for the shipped router, $EXPERTMESH_HOME/routers/KIND).")] = None,
    kind: Annotated[str | None, typer.Option(help="Router kind: embed-linear or finetune (default: router.kind).")] = None,
    per_domain: Annotated[int | None, typer.Option(help="embed-linear only: original examples per domain, shared among its sources.", min=10)] = None,
    variants: Annotated[int | None, typer.Option(help="embed-linear only: user-like variants added per example.", min=0)] = None,
    max_per_source: Annotated[int | None, typer.Option(help="finetune only: the most texts taken from one source.", min=10)] = None,
    epochs: Annotated[float | None, typer.Option(help="finetune only: passes over the data (the best held-out checkpoint is kept).", min=0.1)] = None,
    encoder: Annotated[str | None, typer.Option(help="embed-linear only: minilm, minilm-int8, minilm-static or minilm+static.")] = None,
    target_misroute: Annotated[float, typer.Option(help="Misroute rate the confidence threshold is chosen for.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed for sampling, variants, splits and training.")] = 0,
    extra_data: Annotated[Path | None, typer.Option(help='More {"text", "domain"} rows to train on, as they are: e.g. `expertmesh log export`\'s, from the gateway\'s own traffic.')] = None,
) -> None:
    """Train the router on the vendored data, calibrate it, and write its report (md, json, PNG).

    finetune: MiniLM fine-tuned on texts and conversations (~20 minutes on 2 cores; the
    default router ships trained). embed-linear: a linear head on MiniLM embeddings (~3 minutes)."""
    from expertmesh.cli.router_setup import SETTINGS, TRAINERS, train_and_report
    from expertmesh.router.encoder import ENCODERS

    cfg = load_or_exit(config)
    kind = kind or cfg.router.kind
    if kind not in TRAINERS:
        fail(f"unknown router kind '{kind}'; known kinds: {sorted(TRAINERS)}")
    folder = (out or cfg.router.artifact).expanduser()
    if out is None and folder == paths.packaged_router():  # never overwrite the shipped router
        folder = paths.router_artifacts() / kind
        stderr.print(f"Training into {folder} (set router.artifact to use it, or pass --out).")
    chosen = {"per_domain": per_domain, "variants_per_example": variants, "max_per_source": max_per_source,
              "epochs": epochs, "encoder": encoder, "seed": seed, "target_misroute": target_misroute}  # fmt: skip
    settings_type = SETTINGS[kind]
    known = {field.name for field in dataclasses.fields(settings_type)}
    for option, value in chosen.items():
        if value is not None and option not in known and option not in ("seed", "target_misroute"):
            fail(f"--{option.replace('_', '-').replace('variants-per-example', 'variants')} does not apply to the '{kind}' router kind")
    if encoder is not None and encoder not in ENCODERS:
        fail(f"unknown encoder '{encoder}'; known encoders: {sorted(ENCODERS)}")
    settings = settings_type(**{k: v for k, v in chosen.items() if v is not None and k in known})
    extra = _read_extra(extra_data, cfg.domains) if extra_data is not None else []
    report = train_and_report(cfg, folder, settings, stderr, kind, extra)
    _print_summary(report, folder)


def _read_extra(path: Path, domains: list[str]) -> list:
    from expertmesh.router.data import DataError, read_examples

    try:
        rows = read_examples(path, domains)
    except DataError as exc:
        fail(f"--extra-data: {exc}")
    stderr.print(f"Training on {len(rows)} more rows from {path}.")
    return [row if row.source else dataclasses.replace(row, source="extra") for row in rows]


def _print_summary(report: dict, folder: Path) -> None:
    from expertmesh.eval.routing import render_metrics

    console = Console()
    held_out = report["held_out_sources"]
    render_metrics(console, held_out, "Held-out sources (" + ", ".join(held_out["sources"].values()) + ")")
    if "random_split" in report:
        render_metrics(console, report["random_split"], "Random split")
    if "leave_one_source_out" in report:
        console.print(f"Leave-one-source-out mean accuracy {report['leave_one_source_out']['mean_accuracy']:.4f}")
    calibration, multi_turn = report["calibration"], report["multi_turn"]
    console.print(
        f"Calibration: temperature {calibration['temperature']}, ECE {calibration['ece_before']} -> "
        f"{calibration['ece_after']}; threshold {calibration['threshold']['threshold']} "
        f"(misroute {calibration['threshold']['misroute_rate']}, routed {calibration['threshold']['routed_share']})\n"
        f"Multi-turn: follow-up accuracy {multi_turn['follow_up']['accuracy']:.4f}, "
        f"switch accuracy {multi_turn['switch']['accuracy']:.4f}\n"
        f"Slices: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in report["slices"].items())
    )
    console.print(f"Router artifact and report (report.md, report.json, confusion.png, reliability.png) in {folder}")


@router_app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help='A .jsonl/.jsonl.gz file, or a folder of them, with {"text", "domain"} or {"messages": [...], "domain"} lines.')],
    router: Annotated[Path | None, typer.Option(help="Router artifact folder (default: router.artifact of the config).")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="End the output with one JSON line of the metrics.")] = False,
    report: Annotated[Path | None, typer.Option(help="Also write report.md, report.json and confusion.png here.")] = None,
) -> None:
    """Accuracy, macro-F1, per-domain precision/recall/F1 and the confusion matrix on labelled data.

    A conversation line is routed as the gateway routes it (its last user turn, in the light of
    the earlier ones; router.multi_turn of the config) and labelled by its last user turn."""
    from expertmesh.eval.routing import evaluate_classifier, render_metrics
    from expertmesh.router.classifier import ArtifactError, load_classifier
    from expertmesh.router.data import DataError, read_labelled

    cfg = load_or_exit(config)
    folder = (router or cfg.router.artifact).expanduser()
    try:
        classifier = load_classifier(folder)
        examples = read_labelled(data, classifier.labels)
    except (ArtifactError, DataError) as exc:
        fail(str(exc))
    with Progress(console=stderr, transient=True) as progress:
        task = progress.add_task("routing", total=len(examples))
        metrics = evaluate_classifier(classifier, examples, lambda n: progress.advance(task, n), cfg.router.multi_turn)
    render_metrics(Console(), metrics, f"Router {folder.name} on {data}")
    if report is not None:
        from expertmesh.eval.router_report import write_report

        write_report(report, {"summary": {"router": str(folder), "data": str(data)}, "evaluation": metrics},
                     f"Router {folder.name} on {data.name}")  # fmt: skip
    if as_json:
        typer.echo(json.dumps(metrics, separators=(",", ":")))

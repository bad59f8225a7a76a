"""Loading the configured router, and training it (with a progress bar) when it is missing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from expertmesh.config import Config
from expertmesh.router.classifier import ArtifactError, load_classifier, read_manifest
from expertmesh.router.finetune import FinetuneSettings, train_finetune
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.training import TrainResult, TrainSettings, current_fingerprint, train_embed_linear

log = logging.getLogger(__name__)

Trainer = Callable[..., TrainResult]


# router.finetune imports transformers' training stack only inside train_finetune.
TRAINERS: dict[str, Trainer] = {"embed-linear": train_embed_linear, "finetune": train_finetune}
SETTINGS: dict[str, type[TrainSettings] | type[FinetuneSettings]] = {"embed-linear": TrainSettings, "finetune": FinetuneSettings}


def train_with_progress(
    kind: str, out: Path, domains: list[str], settings: TrainSettings, console: Console
) -> TrainResult:
    trainer = TRAINERS[kind]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"training the {kind} router", total=None)
        return trainer(
            out,
            domains,
            settings,
            on_start=lambda n: progress.update(task, total=n),
            on_embedded=lambda n: progress.advance(task, n),
        )


def train_and_report(config: Config, out: Path, settings: TrainSettings, console: Console, kind: str | None = None) -> dict:
    """Train, then measure what the router will face (random split, leave-one-source-out,
    robustness slices, multi-turn) and write report.json, report.md and plots into `out`."""
    from expertmesh.eval import router_eval
    from expertmesh.eval.router_report import write_report

    result = train_with_progress(kind or config.router.kind, out, config.domains, settings, console)
    with console.status("evaluating: random split, leave-one-source-out, slices, multi-turn"):
        report = {
            "summary": {"router": kind or config.router.kind, "train_examples": len(result.corpus.examples),
                        "settings": str(settings)},  # fmt: skip
            **result.metrics,
            "slices": router_eval.robustness_slices(result.held_out_classifier, result.corpus, result.dev, settings.seed),
            "multi_turn": router_eval.multi_turn(
                result.held_out_classifier, result.corpus, result.dev, config.router.multi_turn, settings.seed
            ),
            "latency": router_eval.single_request_latency(result.classifier, result.corpus),
        }
        if result.corpus.x.shape[1]:  # refits on the shared embeddings: cheap for embed-linear only
            report["random_split"] = router_eval.random_split(result.corpus, settings)
            report["leave_one_source_out"] = router_eval.leave_one_source_out(result.corpus, settings)
    write_report(out, report, f"Router report: {out.name}")
    return report


def load_policy(config: Config, artifact: Path | None = None) -> RoutingPolicy:
    return RoutingPolicy(load_classifier(artifact or config.router.artifact), config)


def load_or_train_policy(config: Config, console: Console) -> RoutingPolicy:
    artifact = config.router.artifact
    try:
        manifest = read_manifest(artifact)
    except ArtifactError:
        console.print(f"No router artifact at {artifact}: training the default router once (a few minutes).")
        report = train_and_report(config, artifact, SETTINGS[config.router.kind](), console)
        held_out = report["held_out_sources"]["macro_f1"]
        random_split = report["random_split"]["macro_f1"]
        console.print(f"Router trained: macro-F1 {held_out:.3f} on held-out sources, {random_split:.3f} on a random split.")
    else:
        settings = SETTINGS.get(manifest.get("kind"), TrainSettings)(**manifest.get("settings", {}))
        if manifest.get("data_fingerprint") != current_fingerprint(settings):
            log.warning(
                "the router artifact in %s was trained on other data than the vendored data now; "
                "retrain it with `expertmesh router train`",
                artifact,
            )
    return load_policy(config)

"""Loading the configured router, and training it (with a progress bar) when it is missing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from expertmesh.config import Config
from router.classifier import ArtifactError, load_classifier, read_manifest
from router.policy import RoutingPolicy
from router.training import TrainResult, TrainSettings, current_fingerprint, train_embed_linear

log = logging.getLogger(__name__)

Trainer = Callable[..., TrainResult]
TRAINERS: dict[str, Trainer] = {"embed-linear": train_embed_linear}


def train_with_progress(
    kind: str, out: Path, domains: list[str], settings: TrainSettings, console: Console
) -> TrainResult:
    trainer = TRAINERS[kind]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("embedding training texts", total=None)
        return trainer(
            out,
            domains,
            settings,
            on_start=lambda n: progress.update(task, total=n),
            on_embedded=lambda n: progress.advance(task, n),
        )


def load_policy(config: Config, artifact: Path | None = None) -> RoutingPolicy:
    return RoutingPolicy(load_classifier(artifact or config.router.artifact), config)


def load_or_train_policy(config: Config, console: Console) -> RoutingPolicy:
    artifact = config.router.artifact
    try:
        manifest = read_manifest(artifact)
    except ArtifactError:
        console.print(f"No router artifact at {artifact}: training the default router once (a few minutes).")
        result = train_with_progress(config.router.kind, artifact, config.domains, TrainSettings(), console)
        held_out = result.metrics["held_out_sources"]["macro_f1"]
        random_split = result.metrics["random_split"]["macro_f1"]
        console.print(f"Router trained: macro-F1 {held_out:.3f} on held-out sources, {random_split:.3f} on a random split.")
    else:
        settings = TrainSettings(**manifest.get("settings", {}))
        if manifest.get("data_fingerprint") != current_fingerprint(settings):
            log.warning(
                "the router artifact in %s was trained on other data than the vendored data now; "
                "retrain it with `expertmesh router train`",
                artifact,
            )
    return load_policy(config)

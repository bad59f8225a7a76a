"""Loading the configured router, and training it (with a progress bar) when it is missing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from expertmesh.config import Config
from expertmesh.router.classifier import ArtifactError, load_classifier, read_manifest
from expertmesh.router.data import Example
from expertmesh.router.finetune import FinetuneResult, FinetuneSettings, train_finetune
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.training import TrainResult, TrainSettings, current_fingerprint, train_embed_linear

log = logging.getLogger(__name__)

Trainer = Callable[..., TrainResult | FinetuneResult]


# router.finetune imports transformers' training stack only inside train_finetune.
TRAINERS: dict[str, Trainer] = {"embed-linear": train_embed_linear, "finetune": train_finetune}
SETTINGS: dict[str, type[TrainSettings | FinetuneSettings]] = {"embed-linear": TrainSettings, "finetune": FinetuneSettings}


def train_with_progress(
    kind: str, out: Path, domains: list[str], settings: TrainSettings, console: Console, extra: Sequence[Example] = ()
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
            extra=extra,
        )


def train_and_report(config: Config, out: Path, settings: TrainSettings, console: Console, kind: str | None = None,
                     extra: Sequence[Example] = ()) -> dict:  # fmt: skip
    """Train (on the vendored data, plus `extra` rows), then measure what the router will face
    (held-out sources, robustness slices, multi-turn, the written dev set; for embed-linear also a
    random split and leave-one-source-out) and write report.json, report.md and plots into `out`."""
    kind = kind or config.router.kind
    result = train_with_progress(kind, out, config.domains, settings, console, extra)
    return evaluate_and_report(config, out, result, settings, console, kind)


def evaluate_and_report(config: Config, out: Path, result: TrainResult | FinetuneResult, settings,
                        console: Console, kind: str) -> dict:  # fmt: skip
    """The report of a router just trained (see train_and_report)."""
    from expertmesh.eval import router_eval
    from expertmesh.eval.router_report import write_report

    multi_turn = config.router.multi_turn
    with console.status("evaluating: held-out sources, slices, multi-turn, dev set"):
        if isinstance(result, TrainResult):  # embed-linear: the held-out model is a separate fit
            held_out_model, dev = result.held_out_classifier, [result.corpus.examples[i] for i in result.dev]
            rows = len(result.corpus.examples)
        else:  # finetune: the shipped model itself never saw the held-out sources
            held_out_model, dev, rows = result.classifier, result.split.dev, len(result.split.train)
        report = {
            "summary": {"router": kind, "train_examples": rows, "settings": str(settings)},
            **result.metrics,
            "slices": router_eval.robustness_slices(held_out_model, dev, settings.seed),
            "multi_turn": router_eval.multi_turn(held_out_model, dev, multi_turn, settings.seed),
            "latency": router_eval.single_request_latency(result.classifier, dev),
        }
        if (dev_set := router_eval.dev_set(result.classifier, multi_turn)) is not None:
            report["dev_set"] = dev_set
        if isinstance(result, TrainResult):  # refits on the shared embeddings: cheap for embed-linear only
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
        console.print(f"Router trained: macro-F1 {held_out:.3f} on held-out sources.")
    else:
        settings = SETTINGS.get(manifest.get("kind"), TrainSettings)(**manifest.get("settings", {}))
        if manifest.get("data_fingerprint") != current_fingerprint(settings):
            log.warning(
                "the router artifact in %s was trained on other data than the vendored data now; "
                "retrain it with `expertmesh router train`",
                artifact,
            )
    return load_policy(config)

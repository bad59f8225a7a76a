"""Router models side by side, on the same evaluation data (issue #13).

Models:
- old default: embed-linear (MiniLM embeddings + logistic regression) trained as the landed
  default was, on the data it had (the public sources only, labelled per source);
- embed-linear, same recipe, on the new data (relabelled public sources, written prompts,
  more public sources);
- setfit (with --setfit): MiniLM contrastively fine-tuned on pairs of the new data
  (sentence-transformers, CosineSimilarityLoss, the SetFit recipe), then a logistic head;
- finetune: the shipped router (router/artifacts/finetune), MiniLM fine-tuned end to end on
  texts and conversations.

Every model is scored on the same sets: the held-out sources (by models that never saw them),
the written dev set (prompts by register, conversations by kind), robustness slices and
synthetic two-turn conversations, calibration (ECE), leave-source(s)-out and latency.

    python benchmarks/router_compare.py [--out reports/router-comparison] [--folds] [--setfit]

--folds also trains two fine-tuned models without other groups of sources (~30 minutes on 2
cores; eval/router_folds.py), for the fine-tuned router's leave-sources-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from expertmesh import paths
from expertmesh.config import MultiTurnConfig, load_config
from expertmesh.eval import router_eval
from expertmesh.eval.routing import evaluate_classifier, predict_domains
from expertmesh.router.calibration import expected_calibration_error
from expertmesh.router.classifier import load_classifier
from expertmesh.router.corpus import build_split
from expertmesh.router.data import (
    DEV_DIR,
    ConversationExample,
    Example,
    read_labelled,
    vendored_data_dir,
    vendored_path,
)
from expertmesh.router.finetune import FinetuneSettings
from expertmesh.router.metrics import classification_metrics
from expertmesh.router.training import TrainSettings, train_embed_linear

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "router" / "artifacts" / "finetune"


def old_data_dir(tmp: Path) -> Path:
    """The routing data the landed default was trained on: the per-domain public source folders
    (no written or newly added sources; outside the vendored folder, so no relabels apply)."""
    for folder in vendored_data_dir().iterdir():
        if folder.name not in ("written", "public"):
            shutil.copytree(folder, tmp / folder.name)
    return tmp


class SetFitClassifier:
    """A contrastively fine-tuned MiniLM and a logistic head (context-free, like embed-linear)."""

    kind = "setfit"
    reads_context = False
    max_length = 128
    threshold = None

    def __init__(self, model, labels: list[str], head) -> None:
        self.model, self.labels, self.head = model, labels, head

    def token_count(self, text: str) -> int:
        return len(self.model.tokenizer(text)["input_ids"])

    def predict_proba(self, texts, contexts=None) -> np.ndarray:
        x = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True)
        return self.head.predict_proba(x)


def train_setfit(domains: list[str], seed: int, pairs: int = 8000) -> SetFitClassifier:
    import torch
    from sentence_transformers import InputExample, SentenceTransformer, losses
    from sklearn.linear_model import LogisticRegression

    from expertmesh.router.encoder import minilm_path

    rng = random.Random(seed)
    split = build_split(vendored_data_dir(), domains, FinetuneSettings(seed=seed))
    singles = [e for e in split.train if not e.context and not e.transform]
    by_domain: dict[str, list[Example]] = {}
    for example in singles:
        by_domain.setdefault(example.domain, []).append(example)
    examples = []
    for _ in range(pairs):  # half positive (same domain), half negative
        first = rng.choice(singles)
        same = rng.random() < 0.5
        other = rng.choice(by_domain[first.domain] if same else singles)
        examples.append(InputExample(texts=[first.text, other.text], label=float(other.domain == first.domain)))
    model = SentenceTransformer(minilm_path(), device="cpu")
    model.max_seq_length = 128
    # The SetFit objective: cosine similarity of a pair's embeddings regressed to 1 (same
    # domain) or 0. A plain loop: sentence-transformers' fit() needs the `datasets` package.
    loss = losses.CosineSimilarityLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    for start in range(0, len(examples), 32):
        batch = examples[start : start + 32]
        features = [model.tokenize([e.texts[side] for e in batch]) for side in (0, 1)]
        value = loss(features, torch.tensor([e.label for e in batch], dtype=torch.float32))
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    sample = rng.sample(singles, min(8000, len(singles)))
    x = model.encode([e.text for e in sample], batch_size=64, normalize_embeddings=True)
    head = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(
        x, [domains.index(e.domain) for e in sample]
    )
    return SetFitClassifier(model, domains, head)


def score(
    name: str, held_out_model, final_model, held_out: list[Example], dev: list, multi_turn: MultiTurnConfig
) -> dict:
    started = time.perf_counter()
    labels = final_model.labels
    gold = np.array([labels.index(e.domain) for e in held_out])
    probabilities = held_out_model.predict_proba([e.text for e in held_out])
    held = classification_metrics([e.domain for e in held_out], [labels[i] for i in probabilities.argmax(1)], labels)
    prompts = [e for e in dev if isinstance(e, Example)]
    conversations = [e for e in dev if isinstance(e, ConversationExample)]
    predicted = predict_domains(final_model, prompts, multi_turn)
    result = {
        "held_out_sources": held,
        "ece": round(expected_calibration_error(probabilities, gold), 4),
        "dev_prompts": classification_metrics([e.domain for e in prompts], predicted, labels),
        "dev_prompts_by_register": router_eval._accuracy_by(
            prompts, predicted, lambda e: e.source.removeprefix("dev_")
        ),
        "dev_conversations": evaluate_classifier(final_model, conversations, multi_turn=multi_turn)["conversations"],
        "slices": router_eval.robustness_slices(held_out_model, held_out, 0),
        "multi_turn": router_eval.multi_turn(held_out_model, held_out, multi_turn, 0),
        "latency": router_eval.single_request_latency(final_model, held_out, count=200),
    }
    print(f"{name}: scored in {time.perf_counter() - started:.0f} s: held-out acc {held['accuracy']}, "
          f"dev acc {result['dev_prompts']['accuracy']}, conversations {result['dev_conversations']['by_kind']}", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "router-comparison")
    parser.add_argument("--folds", action="store_true", help="leave-sources-out for the fine-tuned router (~30 min)")
    parser.add_argument("--setfit", action="store_true", help="also train and score the SetFit-style model (~10 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep the models already in OUT/report.json")
    args = parser.parse_args()

    config = load_config()
    domains, multi_turn = config.domains, config.router.multi_turn
    shipped = load_classifier(SHIPPED)
    settings = FinetuneSettings(**json.loads((SHIPPED / "manifest.json").read_text())["settings"])
    held_out = build_split(vendored_data_dir(), domains, settings).dev
    dev = read_labelled(vendored_path(*DEV_DIR), domains)
    results: dict[str, dict] = {}
    if args.resume and (args.out / "report.json").is_file():
        results = json.loads((args.out / "report.json").read_text())["models"]

    def save() -> None:  # after every model: a long run that fails late keeps what it measured
        report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "settings": asdict(settings),
                  "held_out_rows": len(held_out), "models": results}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "report.md").write_text(render(report))
        plot(report, args.out / "comparison.png")

    if "old default (embed-linear, old data)" not in results:
        with tempfile.TemporaryDirectory() as tmp:
            old = train_embed_linear(paths.router_artifacts() / "compare-old-default", domains,
                                     TrainSettings(seed=args.seed), data_dir=old_data_dir(Path(tmp)))  # fmt: skip
        results["old default (embed-linear, old data)"] = {
            **score("old default", old.held_out_classifier, old.classifier, held_out, dev, multi_turn),
            "leave_one_source_out": router_eval.leave_one_source_out(old.corpus, TrainSettings(seed=args.seed)),
        }
        save()
    if "embed-linear, new data" not in results:
        new = train_embed_linear(
            paths.router_artifacts() / "compare-embed-linear", domains, TrainSettings(seed=args.seed)
        )
        results["embed-linear, new data"] = {
            **score("embed-linear", new.held_out_classifier, new.classifier, held_out, dev, multi_turn),
            "leave_one_source_out": router_eval.leave_one_source_out(new.corpus, TrainSettings(seed=args.seed)),
        }
        save()
    if "finetune (shipped)" not in results:
        results["finetune (shipped)"] = score("finetune", shipped, shipped, held_out, dev, multi_turn)
        save()
    if args.setfit and "setfit, new data" not in results:
        started = time.perf_counter()
        setfit = train_setfit(domains, args.seed)
        results["setfit, new data"] = {**score("setfit", setfit, setfit, held_out, dev, multi_turn),
                                       "train_seconds": round(time.perf_counter() - started)}  # fmt: skip
        save()
    if args.folds and "leave_one_source_out" not in results["finetune (shipped)"]:
        from expertmesh.eval.router_folds import leave_sources_out

        results["finetune (shipped)"]["leave_one_source_out"] = leave_sources_out(
            shipped, domains, settings, paths.home() / "folds"
        )
        save()
    print(f"written to {args.out}")


HEADLINE = [
    ("held-out sources: accuracy", lambda m: m["held_out_sources"]["accuracy"]),
    ("held-out sources: macro-F1", lambda m: m["held_out_sources"]["macro_f1"]),
    ("leave-source(s)-out: mean accuracy", lambda m: m.get("leave_one_source_out", {}).get("mean_accuracy")),
    ("dev prompts: accuracy", lambda m: m["dev_prompts"]["accuracy"]),
    ("dev prompts: macro-F1", lambda m: m["dev_prompts"]["macro_f1"]),
    ("dev conversations: follow-ups kept", lambda m: m["dev_conversations"]["by_kind"]["follow_up"]["accuracy"]),
    ("dev conversations: switches followed", lambda m: m["dev_conversations"]["by_kind"]["switch"]["accuracy"]),
    ("dev conversations: mixed", lambda m: m["dev_conversations"]["by_kind"]["mixed"]["accuracy"]),
    ("dev: short", lambda m: m["dev_prompts_by_register"]["short"]["accuracy"]),
    ("dev: pasted material", lambda m: m["dev_prompts_by_register"]["pasted"]["accuracy"]),
    ("dev: casual", lambda m: m["dev_prompts_by_register"]["casual"]["accuracy"]),
    ("slice: short as written", lambda m: m["slices"].get("short as written (<= 8 words)", {}).get("accuracy")),
    ("slice: made short", lambda m: m["slices"]["made short (<= 8 words)"]["accuracy"]),
    ("slice: code pasted", lambda m: m["slices"]["code pasted into the question"]["accuracy"]),
    ("slice: conversational wrapping", lambda m: m["slices"]["conversational wrapping"]["accuracy"]),
    ("synthetic follow-ups kept", lambda m: m["multi_turn"]["follow_up"]["accuracy"]),
    ("synthetic switches followed", lambda m: m["multi_turn"]["switch"]["accuracy"]),
    ("ECE (held-out sources)", lambda m: m["ece"]),
    ("single request p50 (ms)", lambda m: m["latency"]["p50_ms"]),
]


def render(report: dict) -> str:
    models = report["models"]
    lines = ["# Router models side by side", "",
             (f"Same evaluation data for every model: {report['held_out_rows']} held-out-source texts (at most 400 a "
              "source; scored by models that never saw those sources), the written dev set (router/data/dev), "
              "robustness slices and synthetic conversations made from the held-out texts."), "",
             f"Machine: {report['machine']}. Command: `python benchmarks/router_compare.py --folds --setfit`.", "",
             "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]  # fmt: skip
    for name, get in HEADLINE:
        values = []
        for metrics in models.values():
            value = get(metrics)
            values.append("" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    lines += ["", "![comparison](comparison.png)", ""]
    for model, metrics in models.items():
        lines += [f"## {model}", "", "| dev register | accuracy | n |", "|---|---|---|"]
        lines += [f"| {k} | {v['accuracy']:.3f} | {v['n']} |" for k, v in metrics["dev_prompts_by_register"].items()]
        lines += ["", "| held-out domain | precision | recall | F1 |", "|---|---|---|---|"]
        lines += [f"| {d} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |"
                  for d, r in metrics["held_out_sources"]["per_domain"].items()]  # fmt: skip
        if "leave_one_source_out" in metrics:
            loso = metrics["leave_one_source_out"]
            lines += ["", "| left-out source | accuracy | n |", "|---|---|---|"]
            lines += [f"| {s} | {r['accuracy']:.3f} | {r['n']} |" for s, r in loso["per_source"].items()]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, get) for name, get in HEADLINE if "ECE" not in name and "ms" not in name]
    models = report["models"]
    fig, ax = plt.subplots(figsize=(11, 6.5))
    height = 0.8 / len(models)
    for i, (model, metrics) in enumerate(models.items()):
        values = [get(metrics) or 0 for _, get in rows]
        ax.barh(np.arange(len(rows)) + i * height, values, height, label=model)
    ax.set_yticks(np.arange(len(rows)) + height * (len(models) - 1) / 2, [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy / F1")
    ax.axvline(0.9, color="grey", linewidth=0.5, linestyle="--")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Router models on the same data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

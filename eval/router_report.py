"""The router report: report.json, report.md and PNG plots (confusion matrix, reliability)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_report(folder: Path, report: dict, title: str) -> list[Path]:
    """Write the report files into folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "report.json", folder / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2))
    figures = []
    main = report.get("held_out_sources") or report.get("evaluation")
    if main:
        which = "held-out sources" if "held_out_sources" in report else "evaluation data"
        figures.append(plot_confusion(main["confusion"], folder / "confusion.png", f"{title}: confusion on {which}"))
    if "calibration" in report:
        figures.append(plot_reliability(report["calibration"], folder / "reliability.png"))
    paths[1].write_text(render_markdown(report, title, [f.name for f in figures]))
    return paths + figures


def plot_confusion(confusion: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels, matrix = confusion["labels"], np.array(confusion["matrix"], dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted domain")
    ax.set_ylabel("true domain")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, int(count), ha="center", va="center", fontsize=8, color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true domain's texts")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(calibration: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = calibration["reliability"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    centres = [b["confidence"] for b in bins]
    ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=1 / 15 * 0.9,
           alpha=0.6, label="accuracy per confidence bin")  # fmt: skip
    ax.plot(centres, [b["accuracy"] for b in bins], marker="o", color="tab:blue")
    threshold = calibration["threshold"]["threshold"]
    ax.axvline(threshold, color="tab:red", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("confidence (after temperature scaling)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on held-out sources: ECE {calibration['ece_after']:.3f} "
                 f"(before {calibration['ece_before']:.3f})", fontsize=9)  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metrics_table(metrics: dict) -> list[str]:
    lines = ["| domain | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for domain, row in metrics["per_domain"].items():
        lines.append(f"| {domain} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    return lines


def render_markdown(report: dict, title: str, figures: list[str]) -> str:
    lines = [f"# {title}", ""]
    if "summary" in report:
        lines += [f"- {key}: {value}" for key, value in report["summary"].items()] + [""]
    for key, heading in (("held_out_sources", "Held-out sources"), ("random_split", "Random split"), ("evaluation", "Evaluation")):
        if key in report:
            metrics = report[key]
            sources = f" ({', '.join(metrics['sources'].values())})" if "sources" in metrics else ""
            lines += [f"## {heading}{sources}", "",
                      f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, n = {metrics['n']}", "",
                      *_metrics_table(metrics), ""]  # fmt: skip
    if "confusion.png" in figures:
        lines += ["![confusion matrix](confusion.png)", ""]
    if "calibration" in report:
        cal = report["calibration"]
        chosen = cal["threshold"]
        lines += ["## Calibration (held-out sources)", "",
                  f"temperature {cal['temperature']}, ECE {cal['ece_before']} before and {cal['ece_after']} after; "
                  f"threshold {chosen['threshold']} for a target misroute rate of {chosen['target']}: "
                  f"{chosen['misroute_rate']} misrouted, {chosen['routed_share']} of requests routed (the rest fall back).",
                  "", "![reliability](reliability.png)", ""]  # fmt: skip
    if "leave_one_source_out" in report:
        loso = report["leave_one_source_out"]
        lines += ["## Leave one source out", "", f"mean accuracy {loso['mean_accuracy']:.4f}", "",
                  "| source | accuracy | n |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {s} | {r['accuracy']:.3f} | {r['n']} |" for s, r in loso["per_source"].items()] + [""]
    if "slices" in report:
        lines += ["## Robustness slices (held-out sources)", "", "| slice | accuracy | n |", "|---|---|---|"]
        lines += [f"| {name} | {r['accuracy']:.3f} | {r['n']} |" for name, r in report["slices"].items()] + [""]
    if "multi_turn" in report:
        mt = report["multi_turn"]
        lines += ["## Multi-turn (held-out sources)", "",
                  "| second turn | accuracy | last turn alone | where the reference text alone is routed right | n |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {k} | {mt[k]['accuracy']:.3f} | {mt[k]['last_turn_alone_accuracy']:.3f} | "
                  f"{mt[k]['accuracy_where_reference_is_right']:.3f} | {mt[k]['n']} |" for k in ("follow_up", "switch")]
        lines += ["", "The reference text is the first question for a follow-up (does the follow-up keep a "
                  "conversation that was routed right?) and the new question for a switch (is a question "
                  "that alone is routed right also routed right after another domain's question?).", ""]  # fmt: skip
    if "dev_set" in report:
        lines += _dev_set_lines(report["dev_set"])
    if "latency" in report:
        lat = report["latency"]
        lines += ["## Latency", "", f"single request p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms (n = {lat['n']})", ""]
    return "\n".join(lines)


def _dev_set_lines(dev: dict) -> list[str]:
    lines = ["## Written dev set (never trained on)", ""]
    if "prompts" in dev:
        prompts = dev["prompts"]
        lines += [f"Prompts: accuracy {prompts['accuracy']:.4f}, macro-F1 {prompts['macro_f1']:.4f}, n = {prompts['n']}", "",
                  *_metrics_table(prompts), "", "| register | accuracy | n |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {k} | {r['accuracy']:.3f} | {r['n']} |" for k, r in dev["prompts_by_register"].items()] + [""]
    if "conversations" in dev:
        conversations = dev["conversations"]["conversations"]
        lines += [f"Conversations (label: the last user turn): accuracy {conversations['accuracy']:.4f}, "
                  f"n = {conversations['n']}", "", "| kind | accuracy | n |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {k} | {r['accuracy']:.3f} | {r['n']} |" for k, r in conversations["by_kind"].items()] + [""]
    return lines

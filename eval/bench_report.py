"""Results of an evaluation run, from its folder alone (plan.json + answers.jsonl): accuracy per
system, task and domain with 95% bootstrap intervals, routing accuracy and confusion, the oracle
gap, tokens and latency per system, each expert's share of routed traffic; written as
report.md, report.json and PNG plots. `expertmesh eval report DIR` re-renders it."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from expertmesh.eval.answer_store import AnswerStore, answer_key

PLAN_FILE = "plan.json"
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(correct: list[bool], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 outcomes."""
    if not correct:
        return (float("nan"), float("nan"))
    values = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summarize(correct: list[bool], seed: int) -> dict:
    low, high = bootstrap_interval(correct, seed)
    accuracy = float(np.mean(correct)) if correct else float("nan")
    return {"accuracy": round(accuracy, 4), "ci95": [round(low, 4), round(high, 4)], "n": len(correct)}


def compute(folder: Path) -> dict:
    plan = json.loads((folder / PLAN_FILE).read_text())
    store = AnswerStore(folder)
    seed = plan["seed"]
    items = plan["items"]
    results: dict = {"systems": {}, "missing": 0, "items": len(items),
                     "tasks": sorted({item["task"] for item in items})}
    for system, responders in plan["responders"].items():
        for mode in plan["modes"]:
            by_task, by_domain, overall = defaultdict(list), defaultdict(list), []
            tokens_in, tokens_out, latencies, missing = [], [], [], 0
            for item in items:
                if mode == "likelihood" and item["kind"] != "multiple_choice":
                    continue
                record = store.get(answer_key(item["task"], item["id"], responders[item["key"]], mode))
                if record is None:
                    missing += 1
                    continue
                by_task[item["task"]].append(record["correct"])
                by_domain[item["domain"]].append(record["correct"])
                overall.append(record["correct"])
                tokens_in.append(record["prompt_tokens"])
                tokens_out.append(record["completion_tokens"])
                latencies.append(record["latency_s"])
            if not overall and not missing:
                continue
            results["missing"] += missing
            results["systems"][f"{system}/{mode}"] = {
                "system": system, "mode": mode, "overall": summarize(overall, seed), "missing": missing,
                "tasks": {t: summarize(v, seed) for t, v in sorted(by_task.items())},
                "domains": {d: summarize(v, seed) for d, v in sorted(by_domain.items())},
                "mean_prompt_tokens": round(statistics.fmean(tokens_in), 1) if tokens_in else None,
                "mean_completion_tokens": round(statistics.fmean(tokens_out), 1) if tokens_out else None,
                "median_latency_s": round(statistics.median(latencies), 3) if latencies else None,
            }  # fmt: skip
    results["routing"] = _routing(plan, store)
    results["oracle_gap"] = _oracle_gap(results["systems"])
    results["manifest"] = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    return results


def _routing(plan: dict, store: AnswerStore) -> dict:
    """How the benchmark items were routed. Through a running gateway (`--gateway`), its own
    decisions, as its answers report them; in-process, the router's decisions of the plan."""
    from sklearn.metrics import confusion_matrix

    decisions = {item["key"]: _decision(plan, store, item) for item in plan["items"]}
    answered = [item for item in plan["items"] if decisions[item["key"]] is not None]
    gold = [item["domain"] for item in answered]
    predicted = [decisions[item["key"]]["domain"] or "none" for item in answered]
    labels = sorted(set(gold) | set(predicted))
    share = Counter(decisions[item["key"]]["expert"] for item in answered)
    through_gateway = "gateway" in plan["responders"].get("routed", {}).values()
    return {
        "decided_by": "gateway" if through_gateway else "router",
        "accuracy": round(float(np.mean([g == p for g, p in zip(gold, predicted)])), 4) if gold else None,
        "labels": labels, "confusion": confusion_matrix(gold, predicted, labels=labels).tolist() if gold else [],
        "expert_share": {name: round(count / max(len(answered), 1), 4) for name, count in share.most_common()},
        "fallback_share": round(float(np.mean([decisions[i["key"]]["routed_by"] == "fallback" for i in answered])), 4)
        if answered else None,
    }  # fmt: skip


def _decision(plan: dict, store: AnswerStore, item: dict) -> dict | None:
    """The routing decision for an item: the gateway's, from its answer (None while unanswered),
    or the in-process router's from the plan."""
    if plan["responders"].get("routed", {}).get(item["key"]) != "gateway":
        return plan["routes"][item["key"]]
    records = [store.get(answer_key(item["task"], item["id"], "gateway", mode)) for mode in plan["modes"]]
    record = next((r for r in records if r is not None), None)
    if record is None:
        return None
    if "routed_domain" not in record:  # answered before the gateway's decisions were recorded (2026-12)
        return plan["routes"][item["key"]]
    return {"expert": record["routed_expert"], "domain": record["routed_domain"], "routed_by": record["routed_by"]}


def _oracle_gap(systems: dict) -> dict:
    gaps = {}
    for oracle in systems.values():
        if oracle["system"] != "oracle" or f"routed/{oracle['mode']}" not in systems:
            continue
        routed = systems[f"routed/{oracle['mode']}"]
        gaps[oracle["mode"]] = {d: round(oracle["domains"][d]["accuracy"] - routed["domains"][d]["accuracy"], 4)
                                for d in oracle["domains"] if d in routed["domains"]}  # fmt: skip
    return gaps


# --- rendering ---------------------------------------------------------------------------------


def _cell(summary: dict | None) -> str:
    if not summary or summary["n"] == 0:
        return "–"
    low, high = summary["ci95"]
    return f"{summary['accuracy']:.2f} [{low:.2f}, {high:.2f}]"


def render_markdown(results: dict, title: str) -> str:
    lines = [f"# {title}", ""]
    settings = results["manifest"].get("settings", {})
    if settings:
        lines += [f"- suite `{settings.get('suite')}`: {results['items']} items of {len(results['tasks'])} tasks, "
                  f"seed {settings.get('seed')}, systems {', '.join(settings.get('systems', []))}",
                  f"- fingerprints: `{json.dumps(results['manifest'].get('fingerprints', {}).get('config'))}` (config), "
                  f"`{results['manifest'].get('fingerprints', {}).get('router')}` (router artifact); data files in report.json"]  # fmt: skip
    if results["missing"]:
        lines.append(f"- **{results['missing']} answers missing** (failed requests; rerun the same command to fill them)")
    lines += ["", "Accuracy with 95% bootstrap intervals. `generate`: the answer is generated, then extracted; "
              "`likelihood`: the most likely option letter (multiple-choice tasks only).", ""]  # fmt: skip
    for mode in ("generate", "likelihood"):
        rows = {k: v for k, v in results["systems"].items() if v["mode"] == mode}
        if not rows:
            continue
        domains = sorted({d for v in rows.values() for d in v["domains"]})
        lines += [f"## Per domain ({mode})", "", "| system | " + " | ".join(domains) + " | all |",
                  "|---|" + "---|" * (len(domains) + 1)]  # fmt: skip
        for v in rows.values():
            lines.append(f"| {v['system']} | " + " | ".join(_cell(v["domains"].get(d)) for d in domains) + f" | {_cell(v['overall'])} |")
        tasks = sorted({t for v in rows.values() for t in v["tasks"]})
        lines += ["", f"## Per task ({mode})", "", "| system | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for v in rows.values():
            lines.append(f"| {v['system']} | " + " | ".join(_cell(v["tasks"].get(t)) for t in tasks) + " |")
        lines += ["", f"![accuracy per domain]({mode}_domains.png)", ""]
    gap = results["oracle_gap"]
    if gap:
        lines += ["## Oracle gap (oracle − routed accuracy)", ""]
        for mode, per_domain in gap.items():
            lines.append(f"- {mode}: " + ", ".join(f"{d} {g:+.2f}" for d, g in per_domain.items()))
        lines.append("")
    routing = results["routing"]
    lines += ["## Routing on the benchmark items", "",
              f"decisions of the {routing['decided_by']}; accuracy {routing['accuracy']}; "
              f"sent to the fallback expert: {routing['fallback_share'] or 0:.1%}; "
              "routed traffic per expert: " + ", ".join(f"{k} {v:.0%}" for k, v in routing["expert_share"].items()),
              "", "![routing confusion](routing_confusion.png)", "",
              "## Cost per system", "", "| system | mode | mean tokens in | mean tokens out | median latency (s) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for v in results["systems"].values():
        lines.append(f"| {v['system']} | {v['mode']} | {v['mean_prompt_tokens']} | {v['mean_completion_tokens']} | {v['median_latency_s']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for mode in ("generate", "likelihood"):
        rows = [v for v in results["systems"].values() if v["mode"] == mode]
        if not rows:
            continue
        domains = sorted({d for v in rows for d in v["domains"]})
        width = 0.8 / len(rows)
        figure, axes = plt.subplots(figsize=(max(6, 1.4 * len(domains)), 4))
        for index, v in enumerate(rows):
            acc = [v["domains"].get(d, {}).get("accuracy", np.nan) for d in domains]
            low = [a - v["domains"].get(d, {}).get("ci95", [np.nan])[0] for a, d in zip(acc, domains)]
            high = [v["domains"].get(d, {}).get("ci95", [np.nan, np.nan])[1] - a for a, d in zip(acc, domains)]
            positions = np.arange(len(domains)) + index * width
            axes.bar(positions, acc, width, yerr=[low, high], capsize=2, label=v["system"])
        axes.set_xticks(np.arange(len(domains)) + 0.4 - width / 2, domains)
        axes.set_ylim(0, 1)
        axes.set_ylabel("accuracy (95% bootstrap interval)")
        axes.set_title(f"accuracy per domain ({mode})")
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(folder / f"{mode}_domains.png", dpi=120)
        plt.close(figure)
    routing = results["routing"]
    if not routing["confusion"]:  # nothing routed yet (every answer through the gateway failed)
        return
    figure, axes = plt.subplots(figsize=(5, 4.5))
    axes.imshow(routing["confusion"], cmap="Blues")
    axes.set_xticks(range(len(routing["labels"])), routing["labels"], rotation=45, ha="right")
    axes.set_yticks(range(len(routing["labels"])), routing["labels"])
    for (row, col), value in np.ndenumerate(np.array(routing["confusion"])):
        axes.text(col, row, str(value), ha="center", va="center", fontsize=8)
    axes.set_xlabel("routed domain")
    axes.set_ylabel("gold domain")
    figure.tight_layout()
    figure.savefig(folder / "routing_confusion.png", dpi=120)
    plt.close(figure)


def write_report(folder: Path) -> dict:
    results = compute(folder)
    (folder / "report.json").write_text(json.dumps(results, indent=2))
    (folder / "report.md").write_text(render_markdown(results, f"Evaluation run: {folder.name}"))
    plot(results, folder)
    return results

"""Leave-sources-out for the fine-tuned router: every public source is scored by a model that
never saw it.

Fine-tuning costs ~15 minutes on 2 cores, so a model per source (32 of them) is out of reach;
instead the sources are split into folds. Fold 0 is the held-out sources of router/data.py,
which the shipped model itself never saw; each further fold trains a model without its sources.
The written data (router/data/routing/written) stays in every fold: it is what each domain is
taught by, and the dev set measures generalisation beyond it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from expertmesh.router.corpus import build_split
from expertmesh.router.data import Example, vendored_data_dir
from expertmesh.router.finetune import ONNX_FILE, FinetunedClassifier, FinetuneSettings, fit

# Each source in one fold; a source name (a public file with several domains) or an origin.
EXTRA_FOLDS: list[set[str]] = [
    {"medical/medquad", "medical/pubmedqa_pqal_dev", "legal/legalbench_train_inputs",
     "legal/mmlu_professional_law_test_halfA", "finance/tatqa_questions", "code/conala_intents",
     "math/gsm8k_train", "general/nq_open_dev", "general/mmlu_dev_val", "science/mmlu_dev_val",
     "onstartups_se", "cooking_stackexchange_titles"},
    {"medical/medmcqa_dev", "medical/rqe_consumer_questions", "medical/mmlu_dev_val", "legal/cuad_clause_queries",
     "legal/mmlu_dev_val", "code/mmlu_dev_val", "math/aqua_rat_test", "math/mmlu_dev_val",
     "general/commonsenseqa_validation", "general/self_instruct_seed_tasks", "economics_se_2011",
     "staqc_sql_titles", "dolly_open_qa"},
]  # fmt: skip


def source_key(example: Example, fold: set[str]) -> str:
    return example.source if example.source in fold else example.origin


def per_source_accuracy(classifier, dev: list[Example], fold: set[str]) -> dict[str, dict]:
    predicted = classifier.predict_proba([e.text for e in dev]).argmax(1)
    groups: dict[str, list[bool]] = defaultdict(list)
    for example, label in zip(dev, predicted):
        groups[source_key(example, fold)].append(classifier.labels[label] == example.domain)
    return {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for k, v in sorted(groups.items())}


def leave_sources_out(shipped: FinetunedClassifier, domains: list[str], settings: FinetuneSettings, work: Path,
                      folds: list[set[str]] = EXTRA_FOLDS, log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Per-source accuracy of models that never saw the source, and their mean."""
    from expertmesh.router.corpus import held_out_origins

    fold0 = held_out_origins()
    split0 = build_split(vendored_data_dir(), domains, settings)
    per_source = per_source_accuracy(shipped, split0.dev, fold0)
    for number, fold in enumerate(folds, start=1):
        split = build_split(vendored_data_dir(), domains, settings, held_out=fold)
        log(f"fold {number}: {len(split.train)} training rows, {len(split.dev)} held-out rows")
        folder = work / f"fold{number}"
        fit(split, shipped.labels, settings, folder)
        model = FinetunedClassifier(folder, shipped.labels, asdict(settings), onnx_file=ONNX_FILE)
        per_source.update(per_source_accuracy(model, split.dev, fold))
    accuracies = [row["accuracy"] for row in per_source.values()]
    return {"mean_accuracy": round(float(np.mean(accuracies)), 4), "per_source": per_source,
            "folds": [sorted(fold0), *[sorted(f) for f in folds]]}  # fmt: skip

"""Router kind `finetune`: the packaged MiniLM fine-tuned end to end as a sequence classifier.

Trained with transformers' Trainer on the same balanced, augmented sample as `embed-linear`,
without the held-out sources; those are the dev split for early stopping, for the
temperature and for the confidence threshold. Seeded and reproducible on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from expertmesh.router.calibration import softmax
from expertmesh.router.classifier import MANIFEST, read_manifest
from expertmesh.router.data import data_files, fingerprint, vendored_data_dir
from expertmesh.router.encoder import ENCODER_NAME, minilm_path
from expertmesh.router.training import Corpus, TrainResult, build_examples, held_out_mask, held_out_report

log = logging.getLogger(__name__)

MODEL_DIR = "model"
FORWARD_BATCH = 8  # length-sorted texts per forward pass (see router/encoder.py)


@dataclass(frozen=True)
class FinetuneSettings:
    per_domain: int = 600  # originals per domain, as for embed-linear (router/training.py)
    variants_per_example: int = 1
    seed: int = 0
    target_misroute: float = 0.05
    max_length: int = 64  # tokens: fine-tuning cost grows with it; domain cues come early
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    patience: int = 1  # epochs without dev improvement before stopping


class FinetunedClassifier:
    kind = "finetune"

    def __init__(self, folder: Path, labels: list[str], max_length: int, temperature: float = 1.0,
                 threshold: float | None = None) -> None:  # fmt: skip
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # Inference through ONNX Runtime (BENCHMARKS.md: ~2.5x faster than torch, same logits).
        from expertmesh.router.onnx_minilm import OnnxModel

        self._onnx = OnnxModel(str(folder), quantized=False, head="logits")
        self.labels = list(labels)
        self.max_length = max_length
        self.temperature = temperature
        self.threshold = threshold
        self._lock = threading.Lock()  # the fast tokenizer is not safe across threads

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, verbose=False)["input_ids"])

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        order = np.argsort([len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), FORWARD_BATCH):
            rows = order[start : start + FORWARD_BATCH]
            with self._lock:
                batch = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                       padding=True, return_tensors="np")  # fmt: skip
            out[rows] = self._onnx.run(batch["input_ids"], batch["attention_mask"])
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(self.logits(texts) / self.temperature)

    @classmethod
    def load(cls, folder: Path) -> FinetunedClassifier:
        manifest = read_manifest(folder)
        return cls(folder / MODEL_DIR, manifest["labels"], manifest["settings"]["max_length"],
                   manifest.get("temperature", 1.0), manifest.get("threshold"))  # fmt: skip


def train_finetune(
    out: Path,
    domains: list[str],
    settings: FinetuneSettings = FinetuneSettings(),
    data_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_embedded: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune, calibrate on the held-out sources, and write the artifact folder."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        EarlyStoppingCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_seed(settings.seed)
    data_dir = data_dir or vendored_data_dir()
    examples = build_examples(data_dir, domains, settings)
    labels = [d for d in domains if any(e.domain == d for e in examples)]
    corpus = Corpus(examples, np.zeros((len(examples), 0), dtype=np.float32), labels)
    held_out = held_out_mask(corpus)
    train_rows = np.nonzero(~held_out)[0]
    dev = np.nonzero(held_out & corpus.original)[0]

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )

    def dataset(rows: np.ndarray) -> list[dict]:
        encoded = tokenizer([examples[i].text for i in rows], truncation=True, max_length=settings.max_length)
        return [{"input_ids": ids, "attention_mask": mask, "labels": int(corpus.y[i])}
                for ids, mask, i in zip(encoded["input_ids"], encoded["attention_mask"], rows)]  # fmt: skip

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if on_start:
                on_start(state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if on_embedded:
                on_embedded(1)

    tmp = out.with_name(out.name + ".tmp")  # the artifact is assembled here, then renamed
    shutil.rmtree(tmp, ignore_errors=True)
    arguments = TrainingArguments(
        output_dir=str(tmp / "checkpoints"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=settings.learning_rate,
        warmup_steps=0.06,  # a float below 1: a share of the training steps
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,  # with load_best_model_at_end: the best and the last checkpoint
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        train_sampling_strategy="group_by_length",  # less padding per batch
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(dev),
        processing_class=tokenizer,
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())},
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.patience), Progress()],
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started

    trainer.save_model(str(tmp / MODEL_DIR))
    classifier = FinetunedClassifier(tmp / MODEL_DIR, labels, settings.max_length)
    logits = classifier.logits([corpus.examples[i].text for i in dev])
    metrics = held_out_report(logits, corpus, dev, settings.target_misroute)
    classifier.temperature = metrics["calibration"]["temperature"]
    classifier.threshold = metrics["calibration"]["threshold"]["threshold"]
    manifest = {
        "kind": FinetunedClassifier.kind,
        "encoder": ENCODER_NAME,
        "labels": labels,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_fingerprint": fingerprint(data_files(data_dir), **asdict(settings)),
        "settings": asdict(settings),
        "train_examples": int(len(train_rows)),
        "epochs_run": round(float(trainer.state.epoch or 0), 2),
        "best_dev_accuracy": trainer.state.best_metric,
        "train_seconds": round(train_seconds, 1),
        "temperature": classifier.temperature,
        "threshold": classifier.threshold,
        "torch_threads": torch.get_num_threads(),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    classifier = FinetunedClassifier.load(out)
    return TrainResult(out, classifier, classifier, corpus, dev, metrics)

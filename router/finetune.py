"""Router kind `finetune`: the packaged MiniLM fine-tuned end to end as a sequence classifier
that reads a conversation, not only its last turn.

The input is a sentence pair: the text to route, then the earlier user turns of its
conversation (most recent first; empty for a request on its own). Trained on conversations
(router/corpus.py), the model itself learns that "and for children?" keeps the conversation's
domain and that a self-contained question in another domain switches it; no hand-set rule
mixes probabilities.

Serving needs neither torch nor transformers: the artifact holds an int8 ONNX graph, the
tokenizer file and the manifest (~23 MB, shipped in the repository; router/artifacts/).
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from expertmesh.router.calibration import softmax
from expertmesh.router.classifier import MANIFEST, ArtifactError, read_manifest
from expertmesh.router.corpus import CorpusSettings, TrainingSplit, build_split
from expertmesh.router.data import Example, fingerprint, training_files, vendored_data_dir
from expertmesh.router.encoder import ENCODER_NAME, HEAD_SHARE, minilm_path
from expertmesh.router.text import bounded
from expertmesh.router.training import held_out_report_for

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORWARD_BATCH = 8  # length-sorted inputs per forward pass (see router/encoder.py)
# An int8 graph quantizes its activations with one scale per tensor, computed over the whole
# batch: a batch mate would change a request's scores (and could steer its routing; see
# "batch-dependence attack" in PAPERS.md). Such a graph runs one input per forward pass.
INT8_FORWARD_BATCH = 1


@dataclass(frozen=True)
class FinetuneSettings(CorpusSettings):
    target_misroute: float = 0.05
    text_tokens: int = 64  # tokens read of the text to route (head and tail of a longer one)
    context_tokens: int = 32  # tokens read of the earlier turns, most recent first
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 6e-5
    evaluations: int = 4  # held-out checks over the training; the best checkpoint is kept
    quantize: bool = True  # int8 weights, when they cost under a point of held-out accuracy

    @property
    def max_length(self) -> int:
        return self.text_tokens + self.context_tokens + 3  # [CLS] text [SEP] context [SEP]


class PairTokenizer:
    """Token ids for (text, context) pairs, the same in training and in serving."""

    def __init__(self, tokenizer_file: str | Path, text_tokens: int, context_tokens: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.text_tokens, self.context_tokens = text_tokens, context_tokens
        self._cls, self._sep = self._tokenizer.token_to_id("[CLS]"), self._tokenizer.token_to_id("[SEP]")
        self._pad = self._tokenizer.token_to_id("[PAD]") or 0
        self._lock = threading.Lock()  # tokenizers are not documented as safe across threads

    def ids(self, texts: Sequence[str], contexts: Sequence[str]) -> list[list[int]]:
        """[CLS] head-and-tail of the text [SEP] (start of the context [SEP])."""
        with self._lock:
            encoded = self._tokenizer.encode_batch([bounded(t) for t in texts], add_special_tokens=False)
            nonempty = [i for i, c in enumerate(contexts) if c]
            context_ids = dict(zip(nonempty, self._tokenizer.encode_batch(
                [bounded(contexts[i], 1024, 0) for i in nonempty], add_special_tokens=False)))  # fmt: skip
        out = []
        for i, encoding in enumerate(encoded):
            ids = _head_and_tail(encoding.ids, self.text_tokens)
            row = [self._cls, *ids, self._sep]
            if i in context_ids:
                row += [*context_ids[i].ids[: self.context_tokens], self._sep]
            out.append(row)
        return out

    def token_count(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer.encode(text).ids)

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return ids, mask


def _is_quantized(graph: Path) -> bool:
    """Whether the graph has dynamically quantized operators (int8 activations)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return any(node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul") for node in model.graph.node)


def _head_and_tail(ids: list[int], room: int) -> list[int]:
    if len(ids) <= room:
        return ids
    head = int(room * HEAD_SHARE)
    return ids[:head] + ids[len(ids) - (room - head) :]


class FinetunedClassifier:
    kind = "finetune"
    reads_context = True

    def __init__(self, folder: Path, labels: list[str], settings: dict, temperature: float = 1.0,
                 threshold: float | None = None, onnx_file: str = ONNX_FILE) -> None:  # fmt: skip
        from expertmesh.router.onnx_minilm import OnnxModel

        if not (folder / onnx_file).is_file() or not (folder / TOKENIZER_FILE).is_file():
            raise ArtifactError(f"router artifact {folder} lacks {onnx_file} or {TOKENIZER_FILE}; retrain it")
        self.tokenizer = PairTokenizer(folder / TOKENIZER_FILE, settings["text_tokens"], settings["context_tokens"])
        self._onnx = OnnxModel.from_file(folder / onnx_file)
        self._forward_batch = INT8_FORWARD_BATCH if _is_quantized(folder / onnx_file) else FORWARD_BATCH
        self.labels = list(labels)
        self.max_length = settings["text_tokens"]
        self.temperature = temperature
        self.threshold = threshold

    def token_count(self, text: str) -> int:
        return self.tokenizer.token_count(text)

    def logits(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        contexts = contexts if contexts is not None else [""] * len(texts)
        rows = self.tokenizer.ids(texts, contexts)
        order = np.argsort([len(row) for row in rows], kind="stable")
        out = np.empty((len(rows), len(self.labels)), dtype=np.float32)
        for start in range(0, len(rows), self._forward_batch):
            chunk = order[start : start + self._forward_batch]
            out[chunk] = self._onnx.run(*self.tokenizer.pad([rows[i] for i in chunk]))
        return out

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(self.logits(texts, contexts) / self.temperature)

    @classmethod
    def load(cls, folder: Path) -> FinetunedClassifier:
        manifest = read_manifest(folder)
        return cls(folder, manifest["labels"], manifest["settings"], manifest.get("temperature", 1.0),
                   manifest.get("threshold"), manifest.get("onnx_file", ONNX_FILE))  # fmt: skip


@dataclass
class FinetuneResult:
    folder: Path
    classifier: FinetunedClassifier
    split: TrainingSplit
    metrics: dict


def fit(split: TrainingSplit, labels: list[str], settings: FinetuneSettings, work: Path,
        on_start: Callable[[int], None] | None = None, on_step: Callable[[int], None] | None = None) -> dict:  # fmt: skip
    """Fine-tune on split.train, keep the checkpoint best on split.dev, export it to ONNX in
    `work` (model-fp32.onnx, and model.onnx in int8), and return the training facts."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_seed(settings.seed)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(minilm_path()) / TOKENIZER_FILE, work / TOKENIZER_FILE)
    pairs = PairTokenizer(work / TOKENIZER_FILE, settings.text_tokens, settings.context_tokens)
    index = {label: i for i, label in enumerate(labels)}

    def dataset(examples) -> list[dict]:
        rows = pairs.ids([e.text for e in examples], [e.context for e in examples])
        return [{"input_ids": r, "attention_mask": [1] * len(r), "labels": index[e.domain]} for r, e in zip(rows, examples)]

    train, dev = dataset(split.train), dataset(split.dev)
    counts = np.bincount([row["labels"] for row in train], minlength=len(labels)).astype(np.float64)
    # Class-weighted cross-entropy: every domain weighs alike, whatever its share of the rows.
    weights = torch.tensor(counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32)

    def weighted_loss(outputs, targets, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs.logits, targets, weight=weights)

    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index
    )
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(work / TOKENIZER_FILE), pad_token="[PAD]")

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if on_start:
                on_start(state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(1)

    steps = int(np.ceil(len(train) / settings.batch_size) * settings.epochs)
    every = max(1, steps // settings.evaluations)
    arguments = TrainingArguments(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=settings.learning_rate,
        warmup_steps=0.06,  # a float below 1: a share of the training steps
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=1,  # with load_best_model_at_end: the best and the last checkpoint
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
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
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(hf_tokenizer),
        compute_loss_func=weighted_loss,
        compute_metrics=lambda p: {"macro_f1": _macro_f1(p.label_ids, np.argmax(p.predictions, axis=1), len(labels))},
        callbacks=[Progress()],
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    trainer.save_model(str(work / "torch"))
    hf_tokenizer.save_pretrained(str(work / "torch"))
    _export_onnx(work)
    return {
        "train_rows": len(train),
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "best_dev_macro_f1": trainer.state.best_metric,
        "torch_threads": torch.get_num_threads(),
    }


def _macro_f1(gold: np.ndarray, predicted: np.ndarray, n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, predicted, labels=list(range(n_labels)), average="macro", zero_division=0))


def _export_onnx(work: Path) -> None:
    from expertmesh.router.onnx_minilm import export_logits, quantize_int8

    export_logits(work / "torch", work / "model-fp32.onnx")
    quantize_int8(work / "model-fp32.onnx", work / ONNX_FILE)


def train_finetune(
    out: Path,
    domains: list[str],
    settings: FinetuneSettings = FinetuneSettings(),
    data_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_embedded: Callable[[int], None] | None = None,
    extra: Sequence[Example] = (),
) -> FinetuneResult:
    """Fine-tune without the held-out sources, calibrate on them, and write the artifact folder
    (model.onnx, tokenizer.json, manifest.json, metrics.json). `extra`: more labelled rows to
    train on as they are (e.g. `expertmesh log export`'s, from the gateway's traffic)."""
    data_dir = data_dir or vendored_data_dir()
    split = build_split(data_dir, domains, settings)
    if extra:
        split.train += list(extra)
        split.origins["extra data"] = len(extra)
    labels = [d for d in domains if any(e.domain == d for e in split.train)]
    tmp = out.with_name(out.name + ".tmp")  # the artifact is assembled here, then renamed
    shutil.rmtree(tmp, ignore_errors=True)
    facts = fit(split, labels, settings, tmp / "work", on_start, on_embedded)
    return finish_artifact(tmp, out, labels, settings, split, facts, data_dir)


def finish_artifact(tmp: Path, out: Path, labels: list[str], settings: FinetuneSettings, split: TrainingSplit,
                    facts: dict, data_dir: Path) -> FinetuneResult:  # fmt: skip
    """From tmp/work (the ONNX graphs and the tokenizer): choose the precision, calibrate on the
    held-out sources, write the manifest, and move the artifact into place."""
    chosen, comparison = _choose_precision(tmp / "work", labels, settings, split)
    shutil.copy(tmp / "work" / chosen, tmp / ONNX_FILE)
    shutil.copy(tmp / "work" / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    classifier = FinetunedClassifier(tmp, labels, asdict(settings))
    dev_logits = classifier.logits([e.text for e in split.dev], [e.context for e in split.dev])
    metrics = held_out_report_for(dev_logits, split.dev, labels, settings.target_misroute)
    metrics["precision"] = comparison
    calibration = metrics["calibration"]
    manifest = {
        "kind": FinetunedClassifier.kind,
        "encoder": ENCODER_NAME,
        "labels": labels,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_fingerprint": fingerprint(training_files(data_dir), **asdict(settings)),
        "settings": asdict(settings),
        "train_examples": facts["train_rows"],
        "rows_by_origin": split.origins,
        "extra_examples": split.origins.get("extra data", 0),
        **{k: facts[k] for k in ("train_seconds", "steps", "best_dev_macro_f1", "torch_threads")},
        "onnx": "int8" if chosen == ONNX_FILE else "fp32",
        "temperature": calibration["temperature"],
        "threshold": calibration["threshold"]["threshold"],
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(tmp / "work")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return FinetuneResult(out, FinetunedClassifier.load(out), split, metrics)


def _choose_precision(work: Path, labels: list[str], settings: FinetuneSettings, split: TrainingSplit) -> tuple[str, dict]:
    """int8 when it costs under a point of held-out accuracy (and fits the repository), else fp32."""
    accuracy = {}
    gold = np.array([labels.index(e.domain) for e in split.dev])
    for name in ("model-fp32.onnx", ONNX_FILE):
        classifier = FinetunedClassifier(work, labels, asdict(settings), onnx_file=name)
        predicted = classifier.logits([e.text for e in split.dev], [e.context for e in split.dev]).argmax(1)
        accuracy[name] = round(float((predicted == gold).mean()), 4)
    int8_ok = settings.quantize and accuracy["model-fp32.onnx"] - accuracy[ONNX_FILE] < 0.01
    return (ONNX_FILE if int8_ok else "model-fp32.onnx"), {"fp32_accuracy": accuracy["model-fp32.onnx"],
                                                            "int8_accuracy": accuracy[ONNX_FILE]}  # fmt: skip

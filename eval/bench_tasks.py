"""Benchmark tasks declared as data: one YAML file per task in eval/tasks/.

A task file names its source file (eval/data/bench/), the reader that turns a source row into
an item's fields (a registry below: the only code per source format), the prompt template over
those fields, the answer kind (how an answer is extracted and scored: eval/answers.py), and
limits. Suites (eval/tasks/suites.yaml) group tasks and say how many items of each to take.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
BENCH_DATA_DIR = Path(__file__).resolve().parent / "data" / "bench"
LETTERS = string.ascii_uppercase

AnswerKind = Literal["multiple_choice", "number", "short_answer", "label", "code_tests"]


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    source: str  # a file in eval/data/bench/
    reader: str  # a key of READERS
    domain: str | None = None  # None: each item names its own (MMLU)
    kind: AnswerKind
    prompt: str  # str.format template over the item's fields
    max_tokens: int = Field(default=256, ge=1)
    few_shot: int = Field(default=0, ge=0)  # examples from the same source and sub-task (LegalBench)
    where: dict[str, str] = Field(default_factory=dict)  # keep rows whose fields have these values


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    tasks: list[str]
    items_per_task: int | None = Field(default=None, ge=1)  # None: all of them


@dataclass(frozen=True)
class Item:
    task: str
    id: str
    domain: str
    prompt: str
    gold: Any  # a letter, a number, accepted answers, a label, or None for code (tests decide)
    kind: AnswerKind
    choices: tuple[str, ...] = ()  # the letters (multiple choice) or the labels
    tests: tuple[str, ...] = ()  # MBPP asserts
    max_tokens: int = 256
    extra: dict = field(default_factory=dict, compare=False)


class TaskError(ValueError):
    """A task or suite file is invalid; the message names the file."""


# --- readers: a source row -> the item's fields ------------------------------------------------


def lettered(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def _mcq(question: str, options: list[str], answer_index: int, **more) -> dict:
    return {"question": question, "choices": lettered(options), "letters": tuple(LETTERS[: len(options)]),
            "gold": LETTERS[answer_index], "options": options, **more}  # fmt: skip


def read_medmcqa(row: dict) -> dict:
    return _mcq(row["question"], [row[k] for k in ("opa", "opb", "opc", "opd")], int(row["cop"]) - 1, id=row["id"])


def read_mmlu(row: dict) -> dict:
    options = [row[letter] for letter in "ABCD"]
    return _mcq(row["question"], options, "ABCD".index(row["answer"]), domain=row.get("domain"))


def read_pubmedqa(row: dict) -> dict:
    context = "\n".join(row["CONTEXTS"])
    return _mcq(row["QUESTION"], ["yes", "no", "maybe"], ["yes", "no", "maybe"].index(row["final_decision"]),
                context=context, id=row["pmid"])  # fmt: skip


def read_aqua(row: dict) -> dict:
    options = [option.split(")", 1)[1].strip() if ")" in option else option for option in row["options"]]
    return _mcq(row["question"], options, LETTERS.index(row["correct"]))


def read_lettered_options(row: dict) -> dict:
    """OpenBookQA and CommonsenseQA: options as "A. text" lines, the answer as one such line."""
    lines = [line.strip() for line in row["options"].strip().splitlines() if line.strip()]
    options = [line.split(".", 1)[1].strip() for line in lines]
    return _mcq(row["question"].strip(), options, LETTERS.index(row["answer"].strip()[0]))


def read_gsm8k(row: dict) -> dict:
    return {"question": row["question"], "gold": row["answer"].split("####")[-1].strip().replace(",", "")}


def read_svamp(row: dict) -> dict:
    return {"question": f"{row['Body'].strip()} {row['Question'].strip()}", "gold": row["Answer"], "id": row["ID"]}


def read_nq_open(row: dict) -> dict:
    return {"question": row["question"], "gold": list(row["answer"])}


def read_privacy_qa(row: dict) -> dict:
    return {"question": row["question"].strip(), "context": row["context"], "gold": row["answer"],
            "labels": ("True", "False")}  # fmt: skip


def read_legalbench(row: dict) -> dict:
    """Tasks carry different input fields (text; question and text; contract; claim and policy...)."""
    inputs = {key: value for key, value in row.items() if key not in ("answer", "index", "task")}
    text = inputs["text"] if list(inputs) == ["text"] else "\n".join(f"{k}: {v}" for k, v in inputs.items())
    return {"question": text, "gold": str(row["answer"]), "subtask": row["task"], "id": f"{row['task']}/{row['index']}"}


def read_mbpp(row: dict) -> dict:
    return {"question": row["text"], "tests": tuple(row["test_list"]), "tests_text": "\n".join(row["test_list"]),
            "setup": row.get("test_setup_code", ""), "id": str(row["task_id"]), "gold": None}  # fmt: skip


def read_tatqa(row: dict) -> Iterator[dict]:
    """One report (a table and paragraphs) holds several questions: one item each."""
    table = "\n".join(" | ".join(cell for cell in line) for line in row["table"]["table"])
    paragraphs = "\n".join(p["text"] for p in sorted(row["paragraphs"], key=lambda p: p["order"]))
    for question in row["questions"]:
        answer = question["answer"]
        accepted = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
        scale = f" {question['scale']}" if question.get("scale") else ""
        yield {"question": question["question"], "context": f"{table}\n\n{paragraphs}", "gold": accepted,
               "scale": scale.strip(), "id": question["uid"],
               "match_all": question.get("answer_type") == "multi-span"}  # fmt: skip


READERS: dict[str, Callable[[dict], dict | Iterator[dict]]] = {
    "medmcqa": read_medmcqa,
    "mmlu": read_mmlu,
    "pubmedqa": read_pubmedqa,
    "aqua": read_aqua,
    "lettered_options": read_lettered_options,
    "gsm8k": read_gsm8k,
    "svamp": read_svamp,
    "nq_open": read_nq_open,
    "privacy_qa": read_privacy_qa,
    "legalbench": read_legalbench,
    "mbpp": read_mbpp,
    "tatqa": read_tatqa,
}


# --- loading -----------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TaskError(f"cannot read {path}: {exc}") from exc


@cache
def all_tasks(folder: Path = TASKS_DIR) -> dict[str, TaskSpec]:
    tasks = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "suites.yaml":
            continue
        try:
            spec = TaskSpec.model_validate(_load_yaml(path))
        except ValidationError as exc:
            raise TaskError(f"invalid task file {path}: {exc}") from None
        if spec.reader not in READERS:
            raise TaskError(f"{path}: reader: unknown reader '{spec.reader}'; known: {sorted(READERS)}")
        if not (BENCH_DATA_DIR / spec.source).is_file():
            raise TaskError(f"{path}: source: {spec.source} is not in {BENCH_DATA_DIR}")
        tasks[spec.name] = spec
    return tasks


@cache
def all_suites(folder: Path = TASKS_DIR) -> dict[str, SuiteSpec]:
    path = folder / "suites.yaml"
    raw = _load_yaml(path) or {}
    suites = {}
    for name, body in raw.items():
        try:
            suites[name] = SuiteSpec.model_validate(body)
        except ValidationError as exc:
            raise TaskError(f"invalid suite '{name}' in {path}: {exc}") from None
        unknown = [task for task in suites[name].tasks if task not in all_tasks(folder)]
        if unknown:
            raise TaskError(f"{path}: {name}.tasks: unknown task(s) {unknown}; known: {sorted(all_tasks(folder))}")
    return suites


def source_rows(spec: TaskSpec) -> list[dict]:
    with gzip.open(BENCH_DATA_DIR / spec.source, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [row for row in rows if all(str(row.get(k)) == v for k, v in spec.where.items())]


def load_items(spec: TaskSpec, limit: int | None, seed: int) -> list[Item]:
    """The task's items: a seeded sample of `limit` (all if None), in a stable order."""
    fields_list = []
    for index, row in enumerate(source_rows(spec)):
        produced = READERS[spec.reader](row)
        for sub, fields in enumerate([produced] if isinstance(produced, dict) else list(produced)):
            fields.setdefault("id", f"{index}" if sub == 0 and isinstance(produced, dict) else f"{index}.{sub}")
            fields_list.append(fields)
    rng = random.Random(f"{seed}/{spec.name}")
    chosen = rng.sample(fields_list, limit) if limit is not None and limit < len(fields_list) else fields_list
    return [_item(spec, fields, fields_list, rng) for fields in chosen]


def _item(spec: TaskSpec, fields: dict, pool: list[dict], rng: random.Random) -> Item:
    fields = dict(fields)
    labels = fields.get("labels")
    if spec.few_shot or (spec.kind == "label" and labels is None):
        same = [f for f in pool if f.get("subtask") == fields.get("subtask")]  # LegalBench: its own sub-task
        labels = labels or tuple(sorted({str(f["gold"]) for f in same}))
        shots = rng.sample([f for f in same if f["id"] != fields["id"]], min(spec.few_shot, len(same) - 1))
        fields["examples"] = "".join(f"Input: {s['question']}\nAnswer: {s['gold']}\n\n" for s in shots)
    if labels:
        fields["labels_text"] = ", ".join(labels)
    domain = spec.domain or fields.get("domain")
    if not domain:
        raise TaskError(f"task {spec.name}: item {fields['id']} has no domain and the task names none")
    try:
        prompt = spec.prompt.format(**fields)
    except KeyError as exc:
        raise TaskError(f"task {spec.name}: prompt uses {exc}, which reader '{spec.reader}' does not give") from None
    return Item(
        task=spec.name, id=str(fields["id"]), domain=domain, prompt=prompt, gold=fields.get("gold"), kind=spec.kind,
        choices=tuple(fields.get("letters") or labels or ()), tests=tuple(fields.get("tests", ())),
        max_tokens=spec.max_tokens, extra={"setup": fields.get("setup", ""), "options": fields.get("options"),
               "match_all": bool(fields.get("match_all"))},
    )  # fmt: skip


def data_fingerprint(specs: list[TaskSpec]) -> dict[str, str]:
    """sha256 of each source file and task file, recorded in the report."""
    prints = {}
    for spec in specs:
        prints[spec.source] = hashlib.sha256((BENCH_DATA_DIR / spec.source).read_bytes()).hexdigest()[:16]
        prints[f"tasks/{spec.name}.yaml"] = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    return prints

"""The vendored routing data and labelled JSONL files: loading, sampling, splits, fingerprints."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# One source per domain is held out entirely to measure generalisation to unseen
# sources; each is a different kind of text from the rest of its domain (consumer
# questions, user posts, search queries, ...).
HELD_OUT_SOURCES: dict[str, str] = {
    "medical": "meqsum_consumer_questions",
    "legal": "privacy_policy_qa_questions",
    "finance": "mmlu_dev_val",
    "code": "mbpp_non_test",
    "math": "svamp",
    "science": "openbookqa",
    "general": "self_instruct_user_oriented",
}


class DataError(Exception):
    """A labelled data file is unreadable or has a bad line."""


@dataclass(frozen=True)
class Example:
    text: str
    domain: str
    source: str = ""
    transform: str = ""  # the augmentation that produced this text ("" for an original)
    parent: str = ""  # for an augmentation: the original text it was made from


def vendored_data_dir() -> Path:
    return Path(str(resources.files("expertmesh.router") / "data" / "routing"))


def data_files(path: Path) -> list[Path]:
    """A .jsonl/.jsonl.gz file, or every such file under a folder, in a stable order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
        if not files:
            raise DataError(f"no .jsonl or .jsonl.gz files under {path}")
        return files
    raise DataError(f"no such file or folder: {path}")


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_examples(path: Path, known_domains: Iterable[str] | None = None) -> list[Example]:
    """Read {"text", "domain"[, "source"]} lines; a bad line or unknown domain is an error."""
    known = set(known_domains) if known_domains is not None else None
    examples = []
    for file in data_files(path):
        with _open_text(file) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                examples.append(_parse_line(line, f"{file}:{number}", known))
    if not examples:
        raise DataError(f"no examples in {path}")
    return examples


def _parse_line(line: str, where: str, known: set[str] | None) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(
        row.get("domain"), str
    ):
        raise DataError(f'{where}: expected an object with string fields "text" and "domain"')
    if known is not None and row["domain"] not in known:
        raise DataError(
            f"{where}: unknown domain label '{row['domain']}'; the router knows {sorted(known)}"
        )
    return Example(row["text"], row["domain"], str(row.get("source", "")))


def fingerprint(files: Iterable[Path], **params: object) -> str:
    """sha256 over the files' names and bytes and the sampling parameters."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(f"{file.parent.name}/{file.name}".encode())
        digest.update(file.read_bytes())
    digest.update(json.dumps(params, sort_keys=True).encode())
    return digest.hexdigest()


def balanced_sample(examples: list[Example], per_domain: int, seed: int) -> list[Example]:
    """About per_domain examples from each domain, shared as evenly as possible among its
    sources (a small source gives all it has; the rest is spread over the larger ones), so
    that neither a large domain nor a large templated source dominates."""
    by_source: dict[str, dict[str, list[Example]]] = defaultdict(lambda: defaultdict(list))
    for example in examples:
        by_source[example.domain][example.source].append(example)
    rng = random.Random(seed)
    sampled = []
    for domain in sorted(by_source):
        sources = by_source[domain]
        quota = _water_fill({s: len(group) for s, group in sources.items()}, per_domain)
        for source in sorted(sources):
            group = sources[source]
            sampled.extend(group if quota[source] >= len(group) else rng.sample(group, quota[source]))
    return sampled


def _water_fill(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split total among sources of the given sizes: equal shares, none above its size."""
    quota = dict.fromkeys(sizes, 0)
    open_sources = sorted(sizes, key=lambda s: sizes[s])
    remaining = total
    while open_sources and remaining > 0:
        share = remaining // len(open_sources)
        smallest = open_sources[0]
        if sizes[smallest] - quota[smallest] <= share:
            remaining -= sizes[smallest] - quota[smallest]
            quota[smallest] = sizes[smallest]
            open_sources.pop(0)
            continue
        for source in open_sources:
            quota[source] += share
        remaining -= share * len(open_sources)
        for source in open_sources[:remaining]:
            quota[source] += 1
        remaining = 0
    return quota


def split_held_out_sources(
    examples: list[Example], held_out: dict[str, str] = HELD_OUT_SOURCES
) -> tuple[list[int], list[int]]:
    """Indices of (train, test) where test is every example of the held-out sources."""
    test = [i for i, e in enumerate(examples) if held_out.get(e.domain) == e.source]
    test_set = set(test)
    return [i for i in range(len(examples)) if i not in test_set], test

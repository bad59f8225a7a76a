"""The vendored routing data and labelled JSONL files: loading, sampling, splits, fingerprints."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
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
    # For a turn of a conversation: the earlier user turns, as router/text.py's
    # conversation_context() joins them ("" for a request on its own).
    context: str = ""
    # "domain/source" of the file the row came from: a relabelled row keeps its origin, so that
    # holding a source out holds all of its rows out.
    origin: str = ""


@dataclass(frozen=True)
class ConversationExample:
    """A labelled conversation: its domain is that of the last user turn, read in the light of
    the earlier ones (DOMAINS.md). turn_domains, where given, labels every user turn."""

    messages: tuple[dict, ...]
    domain: str
    source: str = ""
    kind: str = ""  # follow_up, switch or mixed, where the data says
    turn_domains: tuple[str, ...] = ()


def vendored_data_dir() -> Path:
    return Path(str(resources.files("expertmesh.router") / "data" / "routing"))


def vendored_path(*parts: str) -> Path:
    """A file or folder of the router's vendored data (router/data/...)."""
    return Path(str(resources.files("expertmesh.router").joinpath("data", *parts)))


# Vendored rows whose source-level label contradicts DOMAINS.md, relabelled or dropped by hand
# (router/data/DATA.md says how): {"id": row_id(...), "domain": new label or "drop", "why": ...}.
RELABEL_FILE = ("relabel.jsonl.gz",)
CONVERSATIONS_DIR = ("conversations",)  # written training conversations
DEV_DIR = ("dev",)  # the written dev set: never trained on


def row_id(domain: str, source: str, text: str) -> str:
    return hashlib.sha1(f"{domain}/{source}\n{text}".encode()).hexdigest()[:12]


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
    examples = read_labelled(path, known_domains)
    conversations = [e for e in examples if isinstance(e, ConversationExample)]
    if conversations:
        raise DataError(f'{path}: expected {{"text", "domain"}} lines, found {len(conversations)} conversation(s)')
    return examples  # type: ignore[return-value]


def read_labelled(path: Path, known_domains: Iterable[str] | None = None) -> list[Example | ConversationExample]:
    """Read labelled lines of either shape: {"text", "domain"} or {"messages": [...], "domain"}."""
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


def read_conversations(path: Path, known_domains: Iterable[str] | None = None) -> list[ConversationExample]:
    rows = read_labelled(path, known_domains)
    texts = [e for e in rows if not isinstance(e, ConversationExample)]
    if texts:
        raise DataError(f'{path}: expected {{"messages", "domain"}} lines, found {len(texts)} single text(s)')
    return rows  # type: ignore[return-value]


def _parse_line(line: str, where: str, known: set[str] | None) -> Example | ConversationExample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if isinstance(row, dict) and "messages" in row:
        return _parse_conversation(row, where, known)
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(
        row.get("domain"), str
    ):
        raise DataError(f'{where}: expected an object with string fields "text" and "domain"')
    _check_domain(row["domain"], where, known)
    return Example(row["text"], row["domain"], str(row.get("source", "")))


def _check_domain(domain: object, where: str, known: set[str] | None) -> None:
    if not isinstance(domain, str):
        raise DataError(f'{where}: "domain" must be a string')
    if known is not None and domain not in known:
        raise DataError(f"{where}: unknown domain label '{domain}'; the router knows {sorted(known)}")


def _parse_conversation(row: dict, where: str, known: set[str] | None) -> ConversationExample:
    messages = row["messages"]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        raise DataError(f'{where}: "messages" must be a list of objects with a "role"')
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f'{where}: the conversation has no user turn')
    _check_domain(row.get("domain"), where, known)
    turn_domains = row.get("turn_domains") or []
    users = sum(m["role"] == "user" for m in messages)
    if turn_domains:
        if not isinstance(turn_domains, list) or len(turn_domains) != users:
            raise DataError(f'{where}: "turn_domains" must give one label per user turn ({users})')
        for domain in turn_domains:
            _check_domain(domain, where, known)
    return ConversationExample(tuple(messages), row["domain"], str(row.get("source", "")),
                               str(row.get("kind", "")), tuple(turn_domains))  # fmt: skip


def read_relabels() -> dict[str, str]:
    """row_id -> the DOMAINS.md label (or "drop") of vendored rows whose source label was wrong."""
    path = vendored_path(*RELABEL_FILE)
    if not path.is_file():
        return {}
    with _open_text(path) as handle:
        return {row["id"]: row["domain"] for row in map(json.loads, filter(str.strip, handle))}


def apply_relabels(examples: list[Example], relabels: dict[str, str]) -> list[Example]:
    """The examples with each listed row relabelled (or left out, for "drop")."""
    out = []
    for example in examples:
        label = relabels.get(row_id(example.domain, example.source, example.text))
        if label == "drop":
            continue
        out.append(replace(example, domain=label or example.domain, origin=f"{example.domain}/{example.source}"))
    return out


def load_routing_data(data_dir: Path, domains: Iterable[str]) -> list[Example]:
    """The labelled texts of a data folder; for the vendored one, with the DOMAINS.md relabels.
    A relabelled row keeps its source: leave-one-source-out still holds the whole source out."""
    examples = [replace(e, origin=f"{e.domain}/{e.source}") for e in read_examples(data_dir, domains)]
    if Path(data_dir) == vendored_data_dir():
        examples = apply_relabels(examples, read_relabels())
    known = set(domains)
    return [e for e in examples if e.domain in known]


def training_files(data_dir: Path) -> list[Path]:
    """Every file that training reads (for the data fingerprint)."""
    files = data_files(data_dir)
    if Path(data_dir) == vendored_data_dir():
        extra = [vendored_path(*RELABEL_FILE), vendored_path(*CONVERSATIONS_DIR)]
        for path in extra:
            files += data_files(path) if path.exists() else []
    return files


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

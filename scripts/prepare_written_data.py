"""Check, de-duplicate and vendor the written routing data (router/data/DATA.md says how it
was written). Input: the writers' JSON-lines files; output: the gzipped files under router/data.

    python scripts/prepare_written_data.py RAW_DIR

RAW_DIR holds train/<slice>.prompts.jsonl, train/<slice>.conversations.jsonl and
dev/*.prompts.jsonl, dev/*.conversations.jsonl. Steps, in order:
1. schema: domains, registers, kinds, per-turn labels (a bad line stops the run);
2. exact duplicates (case, punctuation and spacing folded) dropped, first kept;
3. near-duplicates dropped: MiniLM cosine similarity >= NEAR_DUPLICATE between two rows of the
   same set, and any training row that near-duplicates a dev row (the dev set stays unseen);
4. over-used phrases: while some 4-word phrase is in more than 1% of a set's rows, the rows
   that carry the most over-used phrases are dropped;
5. dev prompts that equal (folded) any text trained on, a user turn of a training conversation
   included ("why is mars red" was written by several writers), are dropped from the dev set.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

DOMAINS = {"medical", "legal", "finance", "code", "math", "science", "general"}
REGISTERS = {"short", "casual", "story", "task", "pasted", "non_native", "plain_words", "exam", "lookalike", "boundary"}
KINDS = {"follow_up", "switch", "mixed"}
NEAR_DUPLICATE = 0.93
PHRASE_SHARE = 0.01
OUT = Path(__file__).resolve().parent.parent / "router" / "data"


def read_rows(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            check(row, f"{path}:{number}")
            row["slice"] = path.name.split(".")[0]
            rows.append(row)
    return rows


def check(row: dict, where: str) -> None:
    if "messages" in row:
        users = [m for m in row["messages"] if m.get("role") == "user"]
        ok = (row["messages"][-1].get("role") == "user" and 2 <= len(users) <= 4 and row.get("kind") in KINDS
              and len(row.get("turn_domains", [])) == len(users) and set(row["turn_domains"]) <= DOMAINS
              and row.get("domain") == row["turn_domains"][-1]
              and all(isinstance(m.get("content"), str) and m["content"].strip() for m in row["messages"]))  # fmt: skip
    else:
        ok = isinstance(row.get("text"), str) and row["text"].strip() and row.get("domain") in DOMAINS and row.get("register") in REGISTERS
    if not ok:
        raise SystemExit(f"{where}: bad row {row}")


def key_text(row: dict) -> str:
    """What makes a row itself: the text, or the user turns of a conversation."""
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return row["text"]


def folded(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def drop_exact(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        if (k := folded(key_text(row))) not in seen:
            seen.add(k)
            out.append(row)
    return out


def embed(rows: list[dict]) -> np.ndarray:
    from expertmesh.router.encoder import TextEncoder

    return TextEncoder(max_length=128).encode([key_text(r) for r in rows])


def drop_near(rows: list[dict], x: np.ndarray, against: np.ndarray | None = None) -> tuple[list[dict], np.ndarray, int]:
    """Rows not near-duplicating an earlier row of the set (or any row of `against`)."""
    keep: list[int] = []
    for i in range(len(rows)):
        if keep and float((x[keep] @ x[i]).max()) >= NEAR_DUPLICATE:
            continue
        if against is not None and len(against) and float((against @ x[i]).max()) >= NEAR_DUPLICATE:
            continue
        keep.append(i)
    return [rows[i] for i in keep], x[keep], len(rows) - len(keep)


def phrases(text: str) -> set[str]:
    words = folded(text).split()
    return {" ".join(words[i : i + 4]) for i in range(len(words) - 3)}


def drop_overused_phrases(rows: list[dict]) -> tuple[list[dict], int]:
    dropped = 0
    while True:
        counts = Counter(p for r in rows for p in phrases(key_text(r)))
        limit = PHRASE_SHARE * len(rows)
        over = {p for p, c in counts.items() if c > limit}
        if not over:
            return rows, dropped
        worst = max(range(len(rows)), key=lambda i: (len(phrases(key_text(rows[i])) & over), -i))
        rows = rows[:worst] + rows[worst + 1 :]
        dropped += 1


def vendored_texts() -> set[str]:
    """The public sources' texts (routing/<domain>/ and routing/public/), folded."""
    texts = set()
    for path in (OUT / "routing").glob("*/*.jsonl.gz"):
        if path.parent.name != "written":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                texts |= {folded(json.loads(line)["text"]) for line in handle if line.strip()}
    return texts


def write_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as raw:  # mtime 0: the same rows give the same bytes
        raw.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def main(raw: Path) -> None:
    sets = {name: [row for f in sorted((raw / split).glob(f"*.{kind}.jsonl")) for row in read_rows(f)]
            for name, split, kind in (("train prompts", "train", "prompts"), ("train conversations", "train", "conversations"),
                                      ("dev prompts", "dev", "prompts"), ("dev conversations", "dev", "conversations"))}  # fmt: skip
    stats = {}
    embedded = {}
    for name in ("dev prompts", "dev conversations", "train prompts", "train conversations"):
        rows = sets[name]
        before = len(rows)
        rows = drop_exact(rows)
        exact = before - len(rows)
        x = embed(rows)
        dev_name = name.replace("train", "dev")
        against = embedded.get(dev_name) if name.startswith("train") else None
        rows, x, near = drop_near(rows, x, against)
        rows, overused = drop_overused_phrases(rows)
        embedded[name] = x
        sets[name] = rows
        stats[name] = {"written": before, "exact_duplicates": exact, "near_duplicates": near,
                       "overused_phrase_rows": overused, "kept": len(rows),
                       "by_domain": dict(sorted(Counter(r["domain"] for r in rows).items()))}  # fmt: skip
    trained = {folded(r["text"]) for r in sets["train prompts"]} | vendored_texts()
    trained |= {folded(m["content"]) for r in sets["train conversations"] for m in r["messages"] if m["role"] == "user"}
    kept = [r for r in sets["dev prompts"] if folded(r["text"]) not in trained]
    stats["dev prompts"].update(also_trained_on=len(sets["dev prompts"]) - len(kept), kept=len(kept),
                                by_domain=dict(sorted(Counter(r["domain"] for r in kept).items())))  # fmt: skip
    sets["dev prompts"] = kept
    for slice_name in sorted({r["slice"] for r in sets["train prompts"]}):
        rows = [{"text": r["text"], "domain": r["domain"], "source": f"written_{slice_name}", "register": r["register"]}
                for r in sets["train prompts"] if r["slice"] == slice_name]  # fmt: skip
        write_gz(OUT / "routing" / "written" / f"{slice_name}.jsonl.gz", rows)
    conversation = lambda r, prefix: {"messages": r["messages"], "domain": r["domain"], "turn_domains": r["turn_domains"],
                                      "kind": r["kind"], "source": f"{prefix}_{r['slice']}"}  # fmt: skip
    write_gz(OUT / "conversations" / "written.jsonl.gz", [conversation(r, "written") for r in sets["train conversations"]])
    write_gz(OUT / "dev" / "prompts.jsonl.gz", [{"text": r["text"], "domain": r["domain"], "source": f"dev_{r['register']}"}
                                               for r in sets["dev prompts"]])  # fmt: skip
    write_gz(OUT / "dev" / "conversations.jsonl.gz", [conversation(r, "dev") for r in sets["dev conversations"]])
    (OUT / "written-stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

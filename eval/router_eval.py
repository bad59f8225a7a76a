"""How well a trained router generalises: random split, leave-one-source-out, robustness
slices and multi-turn follow-ups. Everything reuses the training embeddings where it can."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
from sklearn.model_selection import train_test_split

from expertmesh.config import MultiTurnConfig
from expertmesh.eval.routing import evaluate_classifier, predict_domains
from expertmesh.router.augment import add_typos, conversational, drop_punctuation, lowercase, short_query
from expertmesh.router.classifier import DomainClassifier
from expertmesh.router.data import DEV_DIR, ConversationExample, Example, read_labelled, vendored_path
from expertmesh.router.metrics import classification_metrics
from expertmesh.router.training import Corpus, TrainSettings, fit_linear, logits_of

SLICE_SAMPLE = 600
MULTI_TURN_SAMPLE = 400
CODE_SNIPPET = "\n\n```\nfor item in items:\n    print(item)\n```"

SLICES: dict[str, Callable[[str, random.Random], str | None]] = {
    "lower-case": lowercase,
    "no punctuation": drop_punctuation,
    "typos (15% of words)": lambda text, rng: add_typos(text, rng, rate=0.15),
    "made short (<= 8 words)": short_query,
    "conversational wrapping": conversational,
    "code pasted into the question": lambda text, rng: text + CODE_SNIPPET,
}

GENERIC_FOLLOW_UPS = [
    "can you explain that more simply?", "why is that?", "are there any exceptions?",
    "can you give me an example?", "ok, and then what?", "is that always true?",
    "thanks. what else should I know?", "could you summarize that in one sentence?",
    "what do you mean by that?", "and what if it's the other way around?",
]  # fmt: skip
DOMAIN_FOLLOW_UPS = {
    "medical": ["and what about the dose for children?", "is it safe during pregnancy?", "what are the side effects?",
                "should I see a doctor about it?"],
    "legal": ["does that apply in every state?", "what if there was no written agreement?", "can they sue me for that?",
              "do I need a lawyer for this?"],
    "finance": ["how does that affect the taxes?", "what was it the year before?", "what is the percentage change?",
                "is that before or after interest?"],
    "code": ["can you do it without a loop?", "how would that look in javascript?", "it throws an error, why?",
             "can you add type hints?"],
    "math": ["what if the number doubles?", "can you check the answer?", "how did you get that step?",
             "what is the general formula?"],
    "science": ["why does that happen?", "what would happen on the moon?", "is that the same for all animals?"],
    "general": ["who else was involved?", "when did that happen?", "where is that exactly?"],
}  # fmt: skip


def random_split(corpus: Corpus, settings: TrainSettings) -> dict:
    """Stratified 80/20 over the original texts; a test text's variants stay out of training."""
    originals = np.nonzero(corpus.original)[0]
    train, test = train_test_split(originals, test_size=0.2, random_state=settings.seed, stratify=corpus.y[originals])
    test_texts = {corpus.examples[i].text for i in test}
    keep = np.array([not corpus.original[i] and corpus.examples[i].parent not in test_texts for i in range(len(corpus.y))])
    train = np.concatenate([train, np.nonzero(keep)[0]])
    return _fit_and_score(corpus, train, test, settings)


def leave_one_source_out(corpus: Corpus, settings: TrainSettings) -> dict:
    """For each source S: train on every other source (variants included), test on S's originals."""
    per_source = {}
    for source in sorted(set(corpus.source)):
        test = np.nonzero((corpus.source == source) & corpus.original)[0]
        train = np.nonzero(corpus.source != source)[0]
        if len(set(corpus.y[train])) < len(corpus.labels):  # the source is its domain's only one
            continue
        scored = _fit_and_score(corpus, train, test, settings)
        per_source[source] = {"accuracy": scored["accuracy"], "n": scored["n"]}
    accuracies = [row["accuracy"] for row in per_source.values()]
    return {"mean_accuracy": round(float(np.mean(accuracies)), 4), "per_source": per_source}


def _fit_and_score(corpus: Corpus, train: np.ndarray, test: np.ndarray, settings: TrainSettings) -> dict:
    coef, intercept = fit_linear(corpus.x[train], corpus.y[train], len(corpus.labels), settings)
    predicted = logits_of(coef, intercept, corpus.x[test]).argmax(axis=1)
    return classification_metrics(
        [corpus.labels[i] for i in corpus.y[test]], [corpus.labels[i] for i in predicted], corpus.labels
    )


def robustness_slices(classifier: DomainClassifier, dev: list[Example], seed: int) -> dict:
    """Accuracy on held-out-source texts as they are and as users would type them."""
    rng = random.Random(seed)
    sample = rng.sample(dev, min(SLICE_SAMPLE, len(dev)))
    max_length = classifier.max_length
    slices: dict[str, list[tuple[str, str]]] = {
        "as written": [(e.text, e.domain) for e in sample],
        "short as written (<= 8 words)": [(e.text, e.domain) for e in sample if len(e.text.split()) <= 8],
        f"long (> {max_length} tokens: head and tail kept)": [
            (e.text, e.domain) for e in sample if classifier.token_count(e.text) > max_length
        ],
    }
    for name, transform in SLICES.items():
        slices[name] = [(made, e.domain) for e in sample if (made := transform(e.text, rng))]
    results = {}
    for name, items in slices.items():
        if not items:
            continue
        predicted = classifier.predict_proba([text for text, _ in items]).argmax(axis=1)
        correct = [classifier.labels[p] == domain for p, (_, domain) in zip(predicted, items)]
        results[name] = {"accuracy": round(float(np.mean(correct)), 4), "n": len(items)}
    return results


def multi_turn(classifier: DomainClassifier, dev: list[Example], config: MultiTurnConfig, seed: int) -> dict:
    """Two-turn conversations built from held-out-source questions (how: docs in README):
    follow-ups (generic or domain-specific) must keep the first turn's domain; a second
    question from another domain must switch to it. Scored through the gateway's multi-turn
    logic (router/policy.py)."""
    rng = random.Random(seed)
    firsts = rng.sample(dev, min(MULTI_TURN_SAMPLE, len(dev)))
    follow_ups, switches = [], []
    for first in firsts:
        pool = GENERIC_FOLLOW_UPS + DOMAIN_FOLLOW_UPS.get(first.domain, [])
        follow_ups.append((first.text, rng.choice(pool), first.domain))
        others = [e for e in dev if e.domain != first.domain]
        other = rng.choice(others)
        switches.append((first.text, other.text, other.domain))
    return {
        "follow_up": _score_conversations(classifier, follow_ups, config, reference="history"),
        "switch": _score_conversations(classifier, switches, config, reference="last"),
        "config": config.model_dump(),
    }


def _score_conversations(
    classifier, conversations: list[tuple[str, str, str]], config: MultiTurnConfig, reference: str
) -> dict:
    """Accuracy of the conversation-aware decision, of the last turn alone, and, to isolate the
    multi-turn logic from single-text mistakes, where the reference text alone ("history" for
    follow-ups, "last" for switches) is routed right."""
    items = [ConversationExample(({"role": "user", "content": first}, {"role": "assistant", "content": "..."},
                                  {"role": "user", "content": last}), gold) for first, last, gold in conversations]  # fmt: skip
    decided = predict_domains(classifier, items, config)
    firsts = classifier.predict_proba([first for first, _, _ in conversations]).argmax(1)
    lasts = classifier.predict_proba([last for _, last, _ in conversations]).argmax(1)
    correct = np.array([p == gold for p, (_, _, gold) in zip(decided, conversations)])
    alone = [classifier.labels[i] == gold for i, (_, _, gold) in zip(lasts, conversations)]
    reference_rows = firsts if reference == "history" else lasts
    reference_right = np.array([classifier.labels[i] == gold for i, (_, _, gold) in zip(reference_rows, conversations)])
    given = float(correct[reference_right].mean()) if reference_right.any() else float("nan")
    return {"accuracy": round(float(correct.mean()), 4), "last_turn_alone_accuracy": round(float(np.mean(alone)), 4),
            "accuracy_where_reference_is_right": round(given, 4), "reference": reference, "n": len(conversations)}  # fmt: skip


def single_request_latency(classifier: DomainClassifier, examples: list[Example], count: int = 100) -> dict:
    texts = [e.text for e in examples[:: max(1, len(examples) // count)]][:count]
    timings = []
    for text in texts:
        start = time.perf_counter()
        classifier.predict_proba([text])
        timings.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(timings, 50)), 2), "p95_ms": round(float(np.percentile(timings, 95)), 2),
            "n": len(timings)}  # fmt: skip



def dev_set(classifier: DomainClassifier, config: MultiTurnConfig) -> dict | None:
    """The written dev set (router/data/dev; never trained on): its prompts, by register (the
    source field), and its conversations, through the gateway's multi-turn logic."""
    folder = vendored_path(*DEV_DIR)
    if not folder.exists():
        return None
    items = read_labelled(folder, classifier.labels)
    prompts = [e for e in items if isinstance(e, Example)]
    conversations = [e for e in items if isinstance(e, ConversationExample)]
    report = {}
    if prompts:
        predicted = predict_domains(classifier, prompts, config)
        report["prompts"] = classification_metrics([e.domain for e in prompts], predicted, classifier.labels)
        report["prompts_by_register"] = _accuracy_by(prompts, predicted, lambda e: e.source.removeprefix("dev_"))
    if conversations:
        report["conversations"] = evaluate_classifier(classifier, conversations, multi_turn=config)
    return report


def _accuracy_by(items: list[Example], predicted: list[str], key: Callable[[Example], str]) -> dict:
    groups: dict[str, list[bool]] = {}
    for item, label in zip(items, predicted):
        groups.setdefault(key(item), []).append(item.domain == label)
    return {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for k, v in sorted(groups.items())}

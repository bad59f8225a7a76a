"""From domain probabilities to an expert: conversations, the mapping, the threshold, the fallback."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from expertmesh.config import Config, MultiTurnConfig
from expertmesh.router.classifier import DomainClassifier
from expertmesh.router.decision import Conversation, RoutingDecision
from expertmesh.router.text import conversation_context, user_turns

DEFAULT_THRESHOLD = 0.35  # for an artifact that chose none and a config that sets none


class RoutingPolicy:
    """Routes texts and conversations with a classifier and the configured domain -> expert map."""

    def __init__(self, classifier: DomainClassifier, config: Config) -> None:
        unknown = sorted(set(classifier.labels) - set(config.domains))
        if unknown:
            raise ValueError(
                f"the router artifact knows domain(s) {unknown} that the configuration does not "
                f"declare (domains: {config.domains}); retrain the router or fix the config"
            )
        self.classifier = classifier
        self.expert_for_domain = config.expert_for_domain()
        configured = config.router.confidence_threshold
        self.threshold = configured if configured is not None else (classifier.threshold or DEFAULT_THRESHOLD)
        self.fallback_expert = config.router.fallback_expert
        self.multi_turn = config.router.multi_turn

    def route(self, text: str) -> RoutingDecision:
        return self.route_batch([text])[0]

    def route_batch(self, texts: Sequence[str]) -> list[RoutingDecision]:
        start = time.perf_counter()
        probabilities = self.classifier.predict_proba(texts)
        latency_ms = (time.perf_counter() - start) * 1000 / max(len(texts), 1)
        return [self._decide(row, latency_ms) for row in probabilities]

    def route_messages(self, messages: Iterable[Mapping[str, Any]]) -> RoutingDecision:
        """Route a conversation: the last user turn, read in the light of the earlier ones.

        A follow-up such as "and what about for children?" keeps the conversation's domain;
        only a last turn that is confidently about another domain switches it.
        """
        texts, contexts = self.inputs_to_score(messages)
        start = time.perf_counter()
        rows = self.classifier.predict_proba(texts, contexts)
        return self.decide(rows, (time.perf_counter() - start) * 1000)

    @property
    def reads_context(self) -> bool:
        return reads_context(self.classifier)

    def inputs_to_score(self, messages: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
        return inputs_to_score(self.classifier, self.multi_turn, messages)

    def decide(self, rows: np.ndarray, latency_ms: float) -> RoutingDecision:
        """The decision from the classifier's rows for inputs_to_score(messages)."""
        probabilities, conversation = conversation_probabilities(self.classifier, self.multi_turn, rows)
        return self._decide(probabilities, latency_ms, conversation)

    def _decide(
        self, probabilities: np.ndarray, latency_ms: float, conversation: Conversation | None = None
    ) -> RoutingDecision:
        labels = self.classifier.labels
        top = int(np.argmax(probabilities))
        confidence = float(probabilities[top])
        confident = confidence >= self.threshold
        return RoutingDecision(
            expert=self.expert_for_domain[labels[top]] if confident else self.fallback_expert,
            routed_by="router" if confident else "fallback",
            domain=labels[top],
            confidence=round(confidence, 4),
            scores={label: round(float(p), 4) for label, p in zip(labels, probabilities)},
            router=self.classifier.kind,
            latency_ms=round(latency_ms, 3),
            conversation=conversation,
            threshold=self.threshold,
        )


def combine_turns(
    last: np.ndarray, context: np.ndarray, multi_turn: MultiTurnConfig, labels: Sequence[str]
) -> tuple[np.ndarray, Conversation]:
    """Domain probabilities for the last turn of a conversation, given the earlier turns'."""
    new, old = int(np.argmax(last)), int(np.argmax(context))
    may_switch_to = labels[new] not in multi_turn.never_switch_to
    if new != old and may_switch_to and float(last[new]) >= multi_turn.switch_confidence:
        return last, "switched"
    mixed = multi_turn.history_weight * context + (1 - multi_turn.history_weight) * last
    top = int(np.argmax(mixed))
    if top != old and labels[top] in multi_turn.never_switch_to:
        return context, "kept"
    return mixed, "kept" if top == old else "switched"


def reads_context(classifier: DomainClassifier) -> bool:
    return getattr(classifier, "reads_context", False)


def inputs_to_score(
    classifier: DomainClassifier, multi_turn: MultiTurnConfig, messages: Iterable[Mapping[str, Any]]
) -> tuple[list[str], list[str]]:
    """(texts, contexts) for the classifier: the last user turn first.

    A classifier that reads context (router kind finetune) gets the last turn with the earlier
    user turns as its context and, in a conversation, the turn before it with its own context
    too (to tell whether the conversation switched domain). Any other gets the last turn and
    the earlier user turns as separate texts, which combine_turns() weighs.
    """
    turns = user_turns(messages) or [""]
    depth = multi_turn.history_turns
    if reads_context(classifier):
        texts, contexts = [turns[-1]], [conversation_context(turns[:-1], depth)]
        if len(turns) > 1 and depth:
            texts.append(turns[-2])
            contexts.append(conversation_context(turns[:-2], depth))
        return texts, contexts
    history = turns[-1 - depth : -1] if depth else []
    return [turns[-1], *(["\n".join(history)] if history else [])], [""] * (1 + bool(history))


def conversation_probabilities(
    classifier: DomainClassifier, multi_turn: MultiTurnConfig, rows: np.ndarray
) -> tuple[np.ndarray, Conversation | None]:
    """The last turn's domain probabilities from the rows for inputs_to_score(), and in a
    conversation whether it kept or switched domain."""
    if len(rows) == 1:
        return rows[0], None
    if reads_context(classifier):  # the model weighed the conversation itself
        switched = int(np.argmax(rows[0])) != int(np.argmax(rows[1]))
        return rows[0], "switched" if switched else "kept"
    return combine_turns(rows[0], rows[1], multi_turn, classifier.labels)

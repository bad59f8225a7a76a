"""From domain probabilities to an expert: the mapping, the threshold and the fallback."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from expertmesh.config import Config
from router.classifier import DomainClassifier
from router.decision import RoutingDecision


class RoutingPolicy:
    """Routes texts with a classifier and the configuration's domain -> expert map."""

    def __init__(self, classifier: DomainClassifier, config: Config) -> None:
        unknown = sorted(set(classifier.labels) - set(config.domains))
        if unknown:
            raise ValueError(
                f"the router artifact knows domain(s) {unknown} that the configuration does not "
                f"declare (domains: {config.domains}); retrain the router or fix the config"
            )
        self.classifier = classifier
        self.expert_for_domain = config.expert_for_domain()
        self.threshold = config.router.confidence_threshold
        self.fallback_expert = config.router.fallback_expert

    def route(self, text: str) -> RoutingDecision:
        return self.route_batch([text])[0]

    def route_batch(self, texts: Sequence[str]) -> list[RoutingDecision]:
        start = time.perf_counter()
        probabilities = self.classifier.predict_proba(texts)
        latency_ms = (time.perf_counter() - start) * 1000 / max(len(texts), 1)
        return [self._decide(row, latency_ms) for row in probabilities]

    def _decide(self, probabilities: np.ndarray, latency_ms: float) -> RoutingDecision:
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
        )

"""One mapping of outcomes to recipient statuses, whichever source reports them."""
from __future__ import annotations

import pytest

from core.delivery.results import BOUNCED, FAILED, RETRY, SENT, SUPPRESSED, WORDS, Outcome, resolve


@pytest.mark.parametrize("outcome,expected", [
    (Outcome(1, SENT, "mid-1", "ignored"), ("sent", None)),
    (Outcome(1, FAILED, error="MessageRejected"), ("failed", "MessageRejected")),
    (Outcome(1, FAILED), ("failed", "failed")),
    (Outcome(1, BOUNCED, error="550 5.1.1"), ("bounced", "bounce: 550 5.1.1")),
    (Outcome(1, BOUNCED), ("bounced", "bounce: hard")),
    (Outcome(1, SUPPRESSED, error="suppressed (bounce list)"), ("suppressed", "suppressed (bounce list)")),
    (Outcome(1, RETRY, error="throttled", attempts=2), ("pending", "throttled")),
    (Outcome(1, RETRY, error="throttled", attempts=3), ("failed", "gave up after 3 attempts: throttled")),
])
def test_each_word_ends_in_one_status(outcome, expected):
    assert resolve(outcome, max_attempts=3) == expected


def test_the_words_are_the_providers_and_suppressed():
    assert WORDS == {"sent", "failed", "bounced", "retry", "suppressed"}


def test_an_unknown_word_or_a_retry_without_a_limit_is_refused():
    with pytest.raises(ValueError, match="no outcome"):
        resolve(Outcome(1, "delivered"), 3)
    with pytest.raises(ValueError, match="max_attempts"):
        resolve(Outcome(1, RETRY), None)

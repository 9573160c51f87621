"""until_coordinated: a group coordinator that is moving or loading (a broker just started) is asked again; any
other error, or a transient one that outlasts the timeout, reaches the caller (CI saw NOT_COORDINATOR fail the
alert forwarder's start on a broker seconds old)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from governance.contract.kafkaio import until_coordinated


class Flaky:
    def __init__(self, codes: list[int]) -> None:
        self.codes = list(codes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise KafkaException(KafkaError(self.codes.pop(0)))
        return "offsets"


def test_transient_coordinator_answers_are_asked_again() -> None:
    call = Flaky([KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                  KafkaError.COORDINATOR_NOT_AVAILABLE])
    assert until_coordinated(call, timeout_s=5, pause_s=0.01) == "offsets"
    assert call.calls == 4


def test_other_errors_are_not_retried() -> None:
    call = Flaky([KafkaError.GROUP_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException) as caught:
        until_coordinated(call, timeout_s=5, pause_s=0.01)
    assert caught.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert call.calls == 1


def test_a_coordinator_that_never_settles_fails_after_the_timeout() -> None:
    call = Flaky([KafkaError.NOT_COORDINATOR] * 1000)
    with pytest.raises(KafkaException):
        until_coordinated(call, timeout_s=0.2, pause_s=0.05)
    assert 2 <= call.calls <= 6

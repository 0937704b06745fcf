"""``SessionEvidence.from_reports`` reads the node's structured ``blamedParties`` first: it
blames without any message text, wins over a message naming someone else, ignores the
reporter itself and indexes outside the session, and falls back to parsing the message
when the field is absent, empty or malformed (reports of older nodes)."""

from __future__ import annotations

from typing import Any

import pytest

from pqmpc_operator.anomaly import SessionEvidence

PARTIES = ["a", "b", "t"]
COMMIT_MSG = ("MAC check 'outputs/sigma' failed over openings []: party 2 opened a value that does not match "
              "its commitment; the session must abort")


def failed(message: str = "", **extra: Any) -> dict[str, Any]:
    return {"phase": "Failed", "reason": "mac_check_failed", "message": message, **extra}


def evidence(reports: dict[str, dict[str, Any]]) -> dict[str, frozenset[str]]:
    return dict(SessionEvidence.from_reports("s1", PARTIES, reports, finished_at=1.0).blamed)


def test_structured_field_blames_without_message_text() -> None:
    reports = {"a": failed("the check failed", blamedParties=[2]), "b": failed("reworded", blamedParties=[2])}
    assert evidence(reports) == {"a": frozenset({"t"}), "b": frozenset({"t"})}


def test_structured_field_wins_over_the_message() -> None:
    # The message names party 2, the structured field party 1: the field is authoritative.
    assert evidence({"a": failed(COMMIT_MSG, blamedParties=[1])}) == {"a": frozenset({"b"})}


def test_reporter_and_out_of_range_indexes_ignored() -> None:
    assert evidence({"a": failed(blamedParties=[0, 3, -1])}) == {}
    assert evidence({"b": failed(blamedParties=[0, 1, 7])}) == {"b": frozenset({"a"})}


@pytest.mark.parametrize("field", [None, "2", [True], [2.0], {"2": 1}], ids=repr)
def test_message_parsing_is_the_fallback(field: Any) -> None:
    doc = failed(COMMIT_MSG) if field is None else failed(COMMIT_MSG, blamedParties=field)
    assert evidence({"a": doc}) == {"a": frozenset({"t"})}


def test_an_empty_blamed_list_names_nobody_whatever_the_message_says() -> None:
    assert evidence({"a": failed(COMMIT_MSG, blamedParties=[])}) == {}


def test_field_counts_only_for_mac_check_failures() -> None:
    doc = {"phase": "Failed", "reason": "peer_lost", "message": "lost party 2", "blamedParties": [2]}
    ev = SessionEvidence.from_reports("s1", PARTIES, {"a": doc}, finished_at=1.0)
    assert ev.outcome == "peer_lost" and not ev.blamed

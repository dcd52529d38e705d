"""The signing-key history: append-only, each key endorsed by the one before."""

from __future__ import annotations

import json

import pytest

from vault.tokens import HistoryError, SigningKey, history_keyset, verify_history
from vault.tokens._history import append_key, history_to_json, start_history


def _three() -> tuple[list[SigningKey], str]:
    keys = [SigningKey.generate() for _ in range(3)]
    history = start_history(keys[0], 100)
    history = append_key(history, keys[0], keys[1].public(), 200)
    history = append_key(history, keys[1], keys[2].public(), 300)
    return keys, history_to_json(history)


def test_a_history_round_trips_and_holds_every_key() -> None:
    keys, text = _three()
    history = verify_history(text)
    assert [e.seq for e in history] == [1, 2, 3]
    assert [e.added_at for e in history] == [100, 200, 300]
    assert history_keyset(history).kids == {k.kid for k in keys}


def test_only_the_last_key_may_endorse_the_next() -> None:
    keys, text = _three()
    with pytest.raises(ValueError):
        append_key(verify_history(text), keys[1], SigningKey.generate().public(), 400)


def _edited(text: str, edit: object) -> str:
    doc = json.loads(text)
    edit(doc["history"])  # type: ignore[operator]
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("edit", "seq"),
    [
        # a key slipped in without the previous private key: self-endorsed
        (lambda h: h.append(_self_endorsed(h, 4)), 4),
        (lambda h: h.pop(1), 2),  # removed from the middle
        (lambda h: h.pop(0), 1),  # the first removed
        (lambda h: h.reverse(), 1),  # reordered
        (lambda h: h[1].update(added_at=h[1]["added_at"] + 1), 2),  # edited
        (lambda h: h[2].update(prev="0" * 64), 3),  # relinked
        (lambda h: h[0].update(extra=1), 1),  # an unknown field
    ],
)
def test_a_changed_history_is_refused_at_the_entry_that_breaks(edit: object, seq: int) -> None:
    _, text = _three()
    with pytest.raises(HistoryError) as e:
        verify_history(_edited(text, edit))
    assert e.value.seq == seq


def _self_endorsed(entries: list[dict[str, object]], seq: int) -> dict[str, object]:
    """A forger's entry: a key of their own, endorsed by itself."""
    forger = SigningKey.generate()
    entry = start_history(forger, 999)[0].to_json()
    return {**entry, "seq": seq}


@pytest.mark.parametrize("text", ["", "{}", '{"history": []}', '{"history": [1]}', "[1]"])
def test_a_malformed_history_is_refused(text: str) -> None:
    with pytest.raises(HistoryError):
        verify_history(text)

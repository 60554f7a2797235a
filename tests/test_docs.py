"""help() documents every public class fully: each constructor parameter in the class's
numpy-style Parameters section (checked against the signature, so an option added in one place
cannot go undocumented), the leave and reject reasons and the stats keys, and a docstring on
every public method and property."""

from __future__ import annotations

import inspect
import re
from typing import Any, List, Set

import pytest

import chatudp
from chatudp import ChatUdpServer, Collector, EchoServer, QQPeer

PUBLIC_CLASSES = [
    getattr(chatudp, name)
    for name in chatudp.__all__
    if inspect.isclass(getattr(chatudp, name)) and not issubclass(getattr(chatudp, name), BaseException)
]


def documented_parameters(doc: str) -> List[str]:
    section = doc.split("Parameters\n    ----------\n", 1)
    assert len(section) == 2, "no Parameters section"
    body = re.split(r"\n    [A-Z][a-z]+\n    -+\n", section[1], maxsplit=1)[0]
    names: List[str] = []
    for line in body.splitlines():
        match = re.match(r"    (\w+(?:, \w+)*) : ", line)
        if match:
            names.extend(match.group(1).split(", "))
    return names


@pytest.mark.parametrize("cls", [c for c in PUBLIC_CLASSES if c.__name__ != "Batch"], ids=lambda c: c.__name__)
def test_every_constructor_parameter_is_documented_once(cls: Any) -> None:
    signature = [name for name in inspect.signature(cls).parameters]
    documented = documented_parameters(inspect.getdoc(cls) and cls.__doc__ or "")
    assert documented == signature, f"{cls.__name__}: the docstring lists {documented}, the signature has {signature}"
    assert cls.__init__.__doc__ and "Initialize self" not in cls.__init__.__doc__


def public_members(cls: Any) -> Set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_every_public_method_and_property_has_a_docstring(cls: Any) -> None:
    missing = []
    for name in sorted(public_members(cls)):
        member = inspect.getattr_static(cls, name)
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if callable(member) or isinstance(member, property):
            if not (getattr(member, "__doc__", None) or "").strip():
                missing.append(name)
    assert not missing, f"{cls.__name__} has no docstring on {missing}"


def test_the_server_docstring_names_every_reason_and_stats_key() -> None:
    doc = ChatUdpServer.__doc__ or ""
    for reason in ("quit", "expired", "unreachable", "table_full", "not_allowed"):
        assert f'"{reason}"' in doc, reason
    with ChatUdpServer("127.0.0.1", 0) as server:
        stats = server.stats
    keys = set(stats) | set(stats["dropped"])
    for key in keys:
        assert f"``{key}``" in doc, key


@pytest.mark.parametrize(
    "cls, make",
    [(EchoServer, lambda: EchoServer("127.0.0.1", 0)), (Collector, lambda: Collector("127.0.0.1", 0))],
    ids=["EchoServer", "Collector"],
)
def test_the_stats_keys_are_in_the_docstring(cls: Any, make: Any) -> None:
    with make() as obj:
        stats = obj.stats
    for key in stats:
        assert f"``{key}``" in (cls.__doc__ or ""), f"{cls.__name__}: {key}"


def test_qqpeer_stats_keys_are_in_its_docstring() -> None:
    with QQPeer(("127.0.0.1", 0)) as peer:
        stats = peer.stats
    doc = QQPeer.__doc__ or ""
    assert all(f"``{key}``" in doc for key in ("received", "sent", "truncated", "send_errors")), stats

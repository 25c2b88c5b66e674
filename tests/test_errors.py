"""The exception tree (errors.py) and the status -> exception mapping (_http.py)."""

from __future__ import annotations

import builtins
import re

import pytest

from ideogram_async import errors
from ideogram_async._http import error_for_status
from ideogram_async.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    IdeogramError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    ValidationError,
    snippet,
)

STATUS_CLASSES = {
    400: BadRequestError,
    413: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    402: PaymentRequiredError,
    404: NotFoundError,
    410: NotFoundError,
    429: RateLimitError,
    500: ServerError,
    502: ServerError,
    503: ServerError,
    504: ServerError,
    408: APIError,
    409: APIError,
}

_TREE_LINE = re.compile(
    r"^(?P<prefix>(?:│   |    )*)[├└]── (?P<name>\w+)(?: \(also (?P<also>\w+)\))?\s*(?P<rest>.*)$"
)


def _docstring_tree() -> list[tuple[str, str, str | None, str]]:
    """``(name, parent, also, comment)`` for each node under the root of the drawn tree."""
    assert errors.__doc__ is not None
    lines = errors.__doc__.splitlines()
    root_at = next(i for i, line in enumerate(lines) if line.strip() == "IdeogramError")
    indent = len(lines[root_at]) - len(lines[root_at].lstrip())
    parents = ["IdeogramError"]
    nodes = []
    for line in lines[root_at + 1 :]:
        match = _TREE_LINE.match(line[indent:])
        if match is None:
            break
        depth = len(match["prefix"]) // 4 + 1
        del parents[depth:]
        nodes.append((match["name"], parents[-1], match["also"], match["rest"]))
        parents.append(match["name"])
    return nodes


def _statuses(comment: str) -> list[int]:
    if re.search(r"\b5xx\b", comment):
        return [500, 501, 502, 503, 504, 599]
    return [int(n) for n in re.findall(r"\b[1-5]\d\d\b", comment)]


def _error(status: int, detail: str = "boom", **kwargs: object) -> APIError:
    options: dict[str, object] = {
        "body": "raw body",
        "request_id": "req-123",
        "retry_after": None,
        "should_retry": None,
    }
    options.update(kwargs)
    return error_for_status(status, detail, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES.items())
def test_error_for_status_picks_the_class(status: int, cls: type[APIError]) -> None:
    error = _error(status)
    assert type(error) is cls
    assert error.status == status


@pytest.mark.parametrize("status", [501, 505, 599])
def test_any_5xx_is_a_server_error(status: int) -> None:
    assert type(_error(status)) is ServerError


@pytest.mark.parametrize("status", sorted(STATUS_CLASSES))
def test_message_carries_status_detail_and_request_id(status: int) -> None:
    error = _error(status, "the image is upside down", request_id="rid-42")
    text = str(error)
    assert str(status) in text
    assert "the image is upside down" in text
    assert "rid-42" in text
    assert "the image is upside down" in error.message


def test_fields_are_passed_through() -> None:
    error = _error(429, body='{"detail":"slow"}', retry_after=2.5, should_retry=False)
    assert isinstance(error, RateLimitError)
    assert error.body == '{"detail":"slow"}'
    assert error.retry_after == 2.5
    assert error.should_retry is False
    assert error.request_id == "req-123"
    assert error.attempts == 0


def test_no_request_id_is_not_mentioned() -> None:
    text = str(_error(500, request_id=None))
    assert "request id" not in text
    assert "None" not in text


@pytest.mark.parametrize("status", sorted(STATUS_CLASSES))
def test_an_empty_detail_still_gives_a_useful_message(status: int) -> None:
    error = _error(status, "")
    assert error.message.strip()
    assert str(status) in str(error)


def test_auth_hints_name_the_key_setting() -> None:
    assert "IDEOGRAM_API_KEY" in str(_error(401))
    assert "IDEOGRAM_API_KEY" in str(_error(403))


def test_a_given_hint_replaces_the_status_hint() -> None:
    error = error_for_status(
        404,
        "gone",
        body="",
        request_id=None,
        retry_after=None,
        should_retry=None,
        hint="download results soon after upscaling",
    )
    assert isinstance(error, errors.NotFoundError)
    assert error.message == "gone — download results soon after upscaling"


# --- the tree ---------------------------------------------------------------------------


def test_the_docstring_tree_lists_every_exported_error_once() -> None:
    names = ["IdeogramError"] + [name for name, _, _, _ in _docstring_tree()]
    assert sorted(names) == sorted(errors.__all__)


@pytest.mark.parametrize(
    ("name", "parent", "also", "comment"), _docstring_tree(), ids=lambda v: str(v)[:20]
)
def test_the_class_hierarchy_matches_the_docstring_tree(
    name: str, parent: str, also: str | None, comment: str
) -> None:
    cls = getattr(errors, name)
    parent_cls = getattr(errors, parent)
    assert parent_cls in cls.__bases__
    assert issubclass(cls, IdeogramError)
    if also is not None:
        assert issubclass(cls, getattr(builtins, also))
    for status in _statuses(comment):
        assert type(_error(status)) is cls, status


def test_the_tree_was_parsed() -> None:
    # Guard against a parser that silently matches nothing.
    tree = {name: parent for name, parent, _, _ in _docstring_tree()}
    assert tree["APITimeoutError"] == "APIConnectionError"
    assert tree["RateLimitError"] == "APIError"
    assert tree["APIError"] == "IdeogramError"


def test_key_relations_of_the_hierarchy() -> None:
    assert issubclass(ValidationError, ValueError)
    assert issubclass(ClientClosedError, RuntimeError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert not issubclass(ResponseFormatError, APIError)
    assert not issubclass(APIConnectionError, APIError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), IdeogramError)


def test_timeout_and_format_errors_keep_their_details() -> None:
    timeout = APITimeoutError("slow", kind="attempt", body_sent=True)
    assert (timeout.kind, timeout.body_sent, str(timeout)) == ("attempt", True, "slow")
    assert APITimeoutError("x", kind="connect").body_sent is False
    fmt = ResponseFormatError("bad", body="<html>", status=202)
    assert (fmt.body, fmt.status, str(fmt)) == ("<html>", 202, "bad")


# --- snippet ----------------------------------------------------------------------------


def test_snippet_flattens_whitespace() -> None:
    assert snippet("  a\n\tb   c \r\n") == "a b c"


def test_snippet_truncates_to_the_limit() -> None:
    text = snippet("x" * 1000, 50)
    assert len(text) == 50
    assert text.endswith("…")
    assert snippet("x" * 50, 50) == "x" * 50

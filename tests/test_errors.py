"""The exception tree (errors.py) and the status -> exception mapping (_transport.py).

The mapping is checked over a real socket, against the emulator, from one table."""

from __future__ import annotations

import builtins
import json
import re
from decimal import Decimal

import pytest
from aiohttp import web

from ideogram_async import IdeogramClient, RetryPolicy, errors
from ideogram_async._transport import _REDIRECT_HINT, _error_detail, _rejection, error_for_status
from ideogram_async.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientClosedError,
    GenerationFailedError,
    IdeogramError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    SharedAllowanceError,
    ValidationError,
    snippet,
)
from ideogram_async.testing import Emulator, Fault, FaultPlan

from ._support import KEY, make_image

HTML_503 = (
    "<html>\n<head><title>503 Service Temporarily Unavailable</title></head>\n<body>\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\n"
    "<hr><center>nginx</center>\n</body>\n</html>\n"
)
JSON = "application/json"
TEXT = "text/plain"

# The one table of the status -> error mapping: the status, the error class, the body
# the service sends, its content type, and the detail the message must carry.
STATUS_TABLE = [
    (400, BadRequestError, '{"detail": "image_request is not JSON"}', JSON, "is not JSON"),
    (401, AuthenticationError, '{"message": "Invalid credentials"}', JSON, "Invalid credentials"),
    (402, PaymentRequiredError, '{"error": "Insufficient balance"}', JSON, "Insufficient balance"),
    (403, AuthenticationError, '{"error": {"message": "Not allowed"}}', JSON, "Not allowed"),
    (404, NotFoundError, "Not Found", TEXT, "Not Found"),
    (408, APIStatusError, '{"detail": "Request timeout"}', JSON, "Request timeout"),
    (409, APIStatusError, '{"detail": "Conflict"}', JSON, "Conflict"),
    (410, NotFoundError, '{"detail": "Gone"}', JSON, "Gone"),
    (413, BadRequestError, "<html><h1>413 Too Large</h1></html>", "text/html", "413 Too Large"),
    (422, BadRequestError, '{"detail": [{"msg": "must be <= 100"}]}', JSON, "must be <= 100"),
    (429, RateLimitError, '{"detail": "Too many requests"}', JSON, "Too many requests"),
    (500, ServerError, '{"detail": "Internal error"}', JSON, "Internal error"),
    (501, ServerError, "Not Implemented", TEXT, "Not Implemented"),
    (502, ServerError, '{"detail": "Bad gateway"}', JSON, "Bad gateway"),
    (503, ServerError, HTML_503, "text/html", "503 Service Temporarily Unavailable"),
    (504, ServerError, '{"message": "Gateway timeout"}', JSON, "Gateway timeout"),
    (599, ServerError, "odd", TEXT, "odd"),
]
STATUS_CLASSES = {status: cls for status, cls, *_ in STATUS_TABLE}
PNG = make_image("png", (4, 4))


async def answer_with(
    status: int, body: str, content_type: str = JSON, headers: dict[str, str] | None = None
) -> IdeogramError:
    """The error ``upscale`` raises when the service answers so (over a real socket)."""
    fault = Fault("status", status, tuple((headers or {}).items()), body, content_type)
    async with (
        Emulator(api_key=KEY, upscale=False, faults=FaultPlan.always(fault)) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, retry=RetryPolicy.no_retries()
        ) as client,
    ):
        with pytest.raises(IdeogramError) as caught:
            await client.upscale(PNG)
    assert emulator.stats.requests == 1
    return caught.value


@pytest.mark.parametrize(
    ("status", "cls", "body", "content_type", "detail"),
    STATUS_TABLE,
    ids=[str(case[0]) for case in STATUS_TABLE],
)
async def test_each_status_maps_to_its_error(
    status: int, cls: type[APIStatusError], body: str, content_type: str, detail: str
) -> None:
    headers = {"x-request-id": f"req-{status}"}
    if status == 429:
        headers["Retry-After"] = "7"
    error = await answer_with(status, body, content_type, headers)
    assert type(error) is cls
    assert isinstance(error, APIStatusError)
    assert error.status == error.status_code == status
    assert error.method == "POST"
    assert error.url is not None
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ideogram/upscale", error.url)
    assert detail in error.message
    assert not any(key in error.message for key in ('"detail"', '"message"', '"error"'))
    assert detail in str(error)
    assert str(status) in str(error)
    assert error.request_id == f"req-{status}"
    assert f"req-{status}" in str(error)
    assert error.body == body
    assert error.attempts == 1
    assert error.retry_after == (7.0 if status == 429 else None)
    if "html" in content_type:
        assert "HTML" in error.message
        assert "\n" not in error.message
    assert KEY not in str(error) + repr(error) + error.body


@pytest.mark.parametrize("header", ["request-id", "x-amzn-requestid", "cf-ray"])
async def test_other_request_id_headers(header: str) -> None:
    error = await answer_with(500, "oops", TEXT, {header: "abc-1"})
    assert isinstance(error, ServerError)
    assert error.request_id == "abc-1"


async def test_x_should_retry_is_read_and_an_empty_body_still_gives_a_message() -> None:
    error = await answer_with(503, "", TEXT, {"x-should-retry": "false"})
    assert isinstance(error, ServerError)
    assert error.should_retry is False
    assert error.message


async def test_the_key_never_appears_in_an_error_even_when_the_service_echoes_it() -> None:
    error = await answer_with(401, json.dumps({"detail": f"Invalid API key: {KEY}"}))
    assert isinstance(error, AuthenticationError)
    assert "Invalid API key: ***" in str(error)
    assert KEY not in str(error) + repr(error) + error.message + error.body


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>It works!</body></html>",
        '{"created": "2000-01-23T04:56:07.000Z"}',
        '{"created": "2000-01-23T04:56:07.000Z", "data": [{"url": 5}]}',
    ],
    ids=["html", "no data", "url int"],
)
async def test_a_200_with_a_malformed_body_is_a_response_format_error(body: str) -> None:
    error = await answer_with(200, body, headers={"x-request-id": "req-bad"})
    assert isinstance(error, ResponseFormatError)
    assert (error.status, error.body, error.attempts) == (200, body, 1)
    assert error.request_id == "req-bad"


async def test_a_malformed_2xx_other_than_200_names_its_status() -> None:
    error = await answer_with(201, "<html>created</html>", "text/html")
    assert isinstance(error, ResponseFormatError)
    assert error.status == 201
    assert "HTTP 201" in str(error)


async def test_an_error_body_that_is_not_utf_8_is_read_with_replacements() -> None:
    async def broken(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, body=b"bad \xff byte", content_type="text/plain")

    app = web.Application()
    app.router.add_post("/ideogram/upscale", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with IdeogramClient(
            api_key=KEY, base_url=base_url, retry=RetryPolicy.no_retries()
        ) as client:
            with pytest.raises(ServerError) as caught:
                await client.upscale(PNG)
    finally:
        await runner.cleanup()
    assert "bad \ufffd byte" in str(caught.value)


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


def _error(status: int, detail: str = "boom", **kwargs: object) -> APIStatusError:
    options: dict[str, object] = {
        "body": "raw body",
        "request_id": "req-123",
        "retry_after": None,
        "should_retry": None,
    }
    options.update(kwargs)
    return error_for_status(status, detail, **options)  # type: ignore[arg-type]


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
    assert tree["RateLimitError"] == "APIStatusError"
    assert tree["APIStatusError"] == "APIError"
    assert tree["APITimeoutError"] == "APIConnectionError"
    assert tree["APIError"] == "IdeogramError"


def test_key_relations_of_the_hierarchy() -> None:
    assert issubclass(ValidationError, ValueError)
    assert issubclass(ClientClosedError, RuntimeError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert not issubclass(ResponseFormatError, APIError)
    # openai-python's shape: a refused connection or a timeout is an APIError too.
    assert issubclass(APITimeoutError, APIError)
    assert not issubclass(APIConnectionError, APIStatusError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), IdeogramError)


def test_timeout_and_format_errors_keep_their_details() -> None:
    timeout = APITimeoutError("slow", kind="attempt", body_sent=True)
    assert (timeout.kind, timeout.body_sent, str(timeout)) == ("attempt", True, "slow")
    assert APITimeoutError("x", kind="connect").body_sent is False
    fmt = ResponseFormatError("bad", body="<html>", status=202, request_id="req-9")
    assert (fmt.body, fmt.status, fmt.request_id, str(fmt)) == ("<html>", 202, "req-9", "bad")
    assert ResponseFormatError("bad", body="").request_id is None


def test_budget_allowance_and_generation_errors_keep_their_details() -> None:
    budget = BudgetExceededError(
        "over budget",
        max_usd=Decimal("1.00"),
        spent=Decimal("0.70"),
        reserved=Decimal("0.20"),
        needed=Decimal("0.15"),
    )
    assert str(budget) == "over budget"
    assert (budget.max_usd, budget.spent, budget.reserved, budget.needed) == (
        Decimal("1.00"),
        Decimal("0.70"),
        Decimal("0.20"),
        Decimal("0.15"),
    )
    assert budget.skipped is False
    skipped = BudgetExceededError(
        "stopped",
        max_usd=Decimal(1),
        spent=Decimal(1),
        reserved=Decimal(0),
        needed=Decimal(0),
        skipped=True,
    )
    assert skipped.skipped is True
    shared = SharedAllowanceError("redis is down", url="redis://***@host:6379/0")
    assert (str(shared), shared.url) == ("redis is down", "redis://***@host:6379/0")
    failed = GenerationFailedError("failed", generation_id="gen-1", failure_reason="unsafe")
    assert (str(failed), failed.generation_id, failed.failure_reason) == (
        "failed",
        "gen-1",
        "unsafe",
    )


# --- snippet ----------------------------------------------------------------------------


def test_snippet_flattens_whitespace() -> None:
    assert snippet("  a\n\tb   c \r\n") == "a b c"


def test_snippet_truncates_to_the_limit() -> None:
    text = snippet("x" * 1000, 50)
    assert len(text) == 50
    assert text.endswith("…")
    assert snippet("x" * 50, 50) == "x" * 50


# --- reject reasons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"reject_reason": "inflight_limit", "max_inflight_requests": 10},
            {"reject_reason": "inflight_limit", "allowance": 10},
        ),
        ({"reject_reason": "daily_limit"}, {"reject_reason": "daily_limit", "allowance": None}),
        (
            {"reject_reason": 7, "max_inflight_requests": "10"},
            {"reject_reason": None, "allowance": None},
        ),
        ({"max_inflight_requests": True}, {"reject_reason": None, "allowance": None}),
        ({"max_inflight_requests": 0}, {"reject_reason": None, "allowance": None}),
        (["not", "an", "object"], {}),
        (None, {}),
    ],
)
def test_reject_reason_and_allowance_are_read_only_when_well_formed(
    body: object, expected: dict[str, object]
) -> None:
    assert _rejection(body) == expected


def test_a_402_is_never_retried_and_names_the_fix() -> None:
    error = _error(402, "no", should_retry=True, reject_reason="daily_limit")
    assert error.should_retry is False
    assert "wait until tomorrow" in str(error)
    assert error.reject_reason == "daily_limit"
    assert "top up or upgrade" in str(_error(402, "no", reject_reason="something_new"))


def test_an_inflight_429_names_the_allowance() -> None:
    error = _error(429, "busy", reject_reason="inflight_limit", allowance=10)
    assert isinstance(error, RateLimitError)
    assert error.allowance == 10
    assert "allowance of 10 images in flight" in str(error)
    assert "allowance=" in str(_error(429, "busy"))  # a plain 429 says what to lower


def test_an_inflight_429_without_the_number_says_the_whole_allowance() -> None:
    error = _error(429, "busy", reject_reason="inflight_limit", request_id=None)
    assert str(error) == (
        "HTTP 429: busy — the organization had its whole allowance images in flight "
        "(every process using its keys counts); ask for fewer images per request, "
        "or ask Ideogram for more"
    )


def test_a_402_keeps_a_hint_given_for_it() -> None:
    error = _error(402, "no", hint="top up the demo account", reject_reason="insufficient_balance")
    assert error.message == "no — top up the demo account"
    assert error.should_retry is False


def test_an_api_error_built_with_only_a_message_and_status() -> None:
    error = ServerError("the gateway timed out", status=504)
    assert str(error) == "HTTP 504: the gateway timed out"
    assert repr(error) == "ServerError('the gateway timed out')"
    assert (error.body, error.request_id, error.retry_after) == ("", None, None)
    assert error.status_code == 504


def test_a_connection_error_is_not_unreachable_unless_told() -> None:
    assert APIConnectionError("reset by peer").unreachable is False
    assert APIConnectionError("reset by peer").body_sent is False
    assert APIConnectionError("refused", unreachable=True).unreachable is True


def test_a_response_format_error_is_about_a_200_unless_told() -> None:
    assert ResponseFormatError("not JSON", body="<html>").status == 200


@pytest.mark.parametrize("status", [300, 301, 308, 399])
def test_a_redirect_gets_the_redirect_hint_unless_given_one(status: int) -> None:
    assert _error(status, "moved").message == f"moved — {_REDIRECT_HINT}"
    assert _error(status, "moved", hint="follow it by hand").message == "moved — follow it by hand"


@pytest.mark.parametrize("status", [299, 400])
def test_a_status_next_to_the_redirects_gets_no_redirect_hint(status: int) -> None:
    assert _REDIRECT_HINT not in _error(status, "x").message


@pytest.mark.parametrize("status", [418, 507])
def test_a_status_without_a_hint_of_its_own_is_called_usually_transient(status: int) -> None:
    assert _error(status, "odd").message == (
        "odd — the service or a gateway failed; usually transient"
    )


def test_an_empty_detail_leaves_the_hint_alone() -> None:
    assert _error(500, "").message == "the service or a gateway failed; usually transient"


JSON_TYPE = "application/json"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ({"detail": "a"}, "a"),
        ({"message": "b"}, "b"),
        ({"error": "c"}, "c"),
        ({"detail": "d", "message": "not this", "error": "nor this"}, "d"),
        ({"message": "e", "error": "not this"}, "e"),
        ({"error": {"message": {"detail": "three deep"}}}, "three deep"),
        ({"error": {"error": {"error": {"message": "four"}}}}, '{"message": "four"}'),
        ({"detail": [{"msg": "a list"}]}, '[{"msg": "a list"}]'),
        ({"other": "field"}, "the text"),
    ],
)
def test_the_detail_is_taken_from_the_json_three_levels_deep(data: object, detail: str) -> None:
    assert _error_detail(data, "the text", JSON_TYPE) == detail


def test_a_detail_too_deep_to_show_falls_back_to_the_text() -> None:
    deep: list[object] = []
    for _ in range(100_000):  # deeper than any recursion limit: json.dumps gives up
        deep = [deep]
    assert _error_detail({"detail": deep}, "the text", JSON_TYPE) == "the text"


def test_an_html_page_is_named_and_cut_at_120_characters() -> None:
    page = "<html>" + "x" * 300
    detail = _error_detail(None, page, "text/html")
    assert detail == f"an HTML error page from a gateway: {snippet(page, 120)!r}"
    assert len(snippet(page, 120)) == 120

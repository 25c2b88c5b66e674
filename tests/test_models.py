"""``UpscaleRequest`` validation and JSON, and ``parse_response`` (models.py)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, cast

import attrs
import pytest

from ideogram_async import (
    IdeogramError,
    MagicPrompt,
    ResponseFormatError,
    UpscaledImage,
    UpscaleRequest,
    UpscaleResponse,
    ValidationError,
)
from ideogram_async.models import parse_response

SEED_MAX = 2_147_483_647
INT_FIELDS = {
    "resemblance": (1, 100),
    "detail": (1, 100),
    "seed": (0, SEED_MAX),
    "num_images": (1, 8),
}
CREATED = datetime(2000, 1, 23, 4, 56, 7, tzinfo=UTC)
DOCUMENTED_BODY = {
    "created": "2000-01-23T04:56:07.000Z",
    "data": [
        {
            "seed": 12345,
            "prompt": "A serene tropical beach scene. ...",
            "resolution": "1024x1024",
            "url": "https://ideogram.ai/api/images/direct/8YEpFzHuS-S6xXEGmCsf7g",
            "is_image_safe": True,
        }
    ],
}


def _mentions(message: str, value: object) -> bool:
    """Whether ``value`` appears in ``message`` as a whole token."""
    return re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message) is not None


def _body(**fields: Any) -> str:
    return json.dumps({"created": "2000-01-23T04:56:07.000Z", "data": [], **fields})


# --- UpscaleRequest: ranges ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, (low, high) in INT_FIELDS.items() for v in (low, high)],
)
def test_int_fields_accept_both_bounds(field: str, value: int) -> None:
    options: dict[str, Any] = {field: value}
    request = UpscaleRequest(**options)
    assert getattr(request, field) == value
    assert json.loads(request.to_json()) == {field: value}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, (low, high) in INT_FIELDS.items() for v in (low - 1, high + 1)],
)
def test_int_fields_reject_just_outside_the_bounds(field: str, value: int) -> None:
    low, high = INT_FIELDS[field]
    with pytest.raises(ValidationError) as info:
        UpscaleRequest(**cast(dict[str, Any], {field: value}))
    message = str(info.value)
    assert field in message
    assert _mentions(message, value)
    assert _mentions(message, low)
    assert _mentions(message, high)


@pytest.mark.parametrize("field", sorted(INT_FIELDS))
@pytest.mark.parametrize("value", [True, False, 50.0, "50", b"50", [50]])
def test_int_fields_reject_wrong_types(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        UpscaleRequest(**cast(dict[str, Any], {field: value}))
    message = str(info.value)
    assert field in message
    assert f"got {type(value).__name__} {value!r}" in message
    low, high = INT_FIELDS[field]
    assert _mentions(message, low)
    assert _mentions(message, high)


def test_validation_error_is_a_value_error_and_an_ideogram_error() -> None:
    with pytest.raises(ValueError, match="resemblance") as info:
        UpscaleRequest(resemblance=0)
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, IdeogramError)


@pytest.mark.parametrize("value", [5, b"text", ["a"]])
def test_prompt_must_be_a_string(value: object) -> None:
    with pytest.raises(ValidationError, match="prompt") as info:
        UpscaleRequest(prompt=value)  # type: ignore[arg-type]
    assert f"got {type(value).__name__} {value!r}" in str(info.value)


def test_a_prompt_up_to_the_cap_is_taken_and_a_longer_one_is_refused_saying_why() -> None:
    assert UpscaleRequest(prompt="p" * 10_000).prompt == "p" * 10_000
    with pytest.raises(ValidationError) as info:
        UpscaleRequest(prompt="p" * 10_001)
    assert str(info.value) == (
        "prompt is 10001 characters, over the cap of 10000; "
        "shorten it (a prompt guides the upscale, a few sentences are plenty)"
    )


def test_validators_also_run_on_evolve() -> None:
    request = UpscaleRequest(resemblance=10)
    with pytest.raises(ValidationError, match="resemblance"):
        attrs.evolve(request, resemblance=500)


def test_request_is_immutable() -> None:
    request = UpscaleRequest(detail=10)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.detail = 20  # type: ignore[misc]


# --- UpscaleRequest: magic prompt ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MagicPrompt.AUTO, MagicPrompt.AUTO),
        (MagicPrompt.ON, MagicPrompt.ON),
        (MagicPrompt.OFF, MagicPrompt.OFF),
        ("AUTO", MagicPrompt.AUTO),
        ("auto", MagicPrompt.AUTO),
        ("on", MagicPrompt.ON),
        ("Off", MagicPrompt.OFF),
    ],
)
def test_magic_prompt_accepts_members_and_names_in_any_case(
    value: object, expected: MagicPrompt
) -> None:
    request = UpscaleRequest(magic_prompt_option=value)  # type: ignore[arg-type]
    assert request.magic_prompt_option is expected
    assert json.loads(request.to_json()) == {"magic_prompt_option": expected.value}


@pytest.mark.parametrize("value", ["maybe", "", "AUTOMATIC", 1, True, ["AUTO"]])
def test_magic_prompt_rejects_anything_else(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        UpscaleRequest(magic_prompt_option=value)  # type: ignore[arg-type]
    message = str(info.value)
    assert "magic_prompt_option" in message
    assert repr(value) in message
    for allowed in ("AUTO", "ON", "OFF"):
        assert allowed in message


# --- UpscaleRequest: to_json ---------------------------------------------------------


def test_to_json_of_the_spec_example_is_compact_and_has_exactly_its_fields() -> None:
    request = UpscaleRequest(
        resemblance=50,
        magic_prompt_option="AUTO",
        prompt="A serene tropical beach",
        seed=12345,
        detail=50,
    )
    text = request.to_json()
    expected = (
        '{"resemblance":50,"magic_prompt_option":"AUTO",'
        '"prompt":"A serene tropical beach","seed":12345,"detail":50}'
    )
    assert json.loads(text) == json.loads(expected)
    # Compact: re-serialising the same mapping compactly, in the same order, gives it back.
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    assert '": ' not in text
    assert '", "' not in text


def test_to_json_is_encoded_once_for_equal_requests_and_apart_for_others() -> None:
    first = UpscaleRequest(prompt="a beach", seed=7).to_json()
    # An equal request built anew gets the string already encoded, not a new one.
    assert UpscaleRequest(prompt="a beach", seed=7).to_json() is first
    assert json.loads(UpscaleRequest(prompt="a beach", seed=8).to_json())["seed"] == 8
    assert json.loads(UpscaleRequest(prompt="a beach").to_json()) == {"prompt": "a beach"}


def test_to_json_of_an_empty_request_is_an_empty_object() -> None:
    assert UpscaleRequest().to_json() == "{}"


def test_to_json_omits_unset_fields_but_keeps_falsy_values() -> None:
    text = UpscaleRequest(seed=0, prompt="", num_images=8).to_json()
    assert json.loads(text) == {"seed": 0, "prompt": "", "num_images": 8}
    assert "null" not in text


@pytest.mark.parametrize(
    "prompt",
    [
        "A serene tropical beach",
        "100% cotton, 50%off",
        "été à la plage — 🌴 海滩",
        'quotes " and \\ backslash',
        "A%20serene",
    ],
)
def test_to_json_sends_the_prompt_verbatim_never_percent_encoded(prompt: str) -> None:
    text = UpscaleRequest(prompt=prompt).to_json()
    assert json.loads(text) == {"prompt": prompt}
    if "%" not in prompt:
        assert "%" not in text


def test_to_json_keeps_non_ascii_text_as_utf_8_not_escapes() -> None:
    prompt = "été à la plage — 🌴 海滩"
    assert UpscaleRequest(prompt=prompt).to_json() == '{"prompt":"' + prompt + '"}'


def test_to_json_of_every_field() -> None:
    request = UpscaleRequest(
        prompt="p", resemblance=1, detail=100, magic_prompt_option=MagicPrompt.ON, seed=7,
        num_images=3,
    )  # fmt: skip
    assert json.loads(request.to_json()) == {
        "prompt": "p",
        "resemblance": 1,
        "detail": 100,
        "magic_prompt_option": "ON",
        "seed": 7,
        "num_images": 3,
    }


# --- parse_response: the documented shape --------------------------------------------


def test_parse_response_of_the_spec_example() -> None:
    response = parse_response(json.dumps(DOCUMENTED_BODY))
    assert isinstance(response, UpscaleResponse)
    assert response.created == CREATED
    assert response.data == [
        UpscaledImage(
            seed=12345,
            prompt="A serene tropical beach scene. ...",
            resolution="1024x1024",
            url="https://ideogram.ai/api/images/direct/8YEpFzHuS-S6xXEGmCsf7g",
            is_image_safe=True,
        )
    ]


@pytest.mark.parametrize(
    "created",
    ["2000-01-23T04:56:07.000Z", "2000-01-23 04:56:07+00:00", "2000-01-23T06:56:07+02:00"],
)
def test_created_formats_parse_to_aware_datetimes(created: str) -> None:
    response = parse_response(_body(created=created))
    assert response.created.tzinfo is not None
    assert response.created.utcoffset() is not None
    assert response.created == CREATED


def test_a_naive_created_timestamp_is_taken_as_utc() -> None:
    response = parse_response(_body(created="2000-01-23T04:56:07"))
    assert response.created.tzinfo is not None
    assert response.created == CREATED


def test_unknown_fields_are_ignored_at_both_levels() -> None:
    body = json.dumps(
        {
            "created": "2000-01-23 04:56:07+00:00",
            "request_id": "abc",
            "data": [{"url": "https://h/i.png", "style_type": "AUTO", "extra": {"a": [1]}}],
        }
    )
    response = parse_response(body)
    assert response.data == [UpscaledImage(url="https://h/i.png")]


def test_every_item_field_is_optional() -> None:
    response = parse_response(_body(data=[{}, {"seed": 1}]))
    assert response.data == [UpscaledImage(), UpscaledImage(seed=1)]
    assert response.data[0].url is None
    assert response.data[0].is_image_safe is None


def test_an_empty_data_list_is_fine() -> None:
    assert parse_response(_body(data=[])).data == []


def test_explicit_nulls_in_items_are_accepted() -> None:
    response = parse_response(_body(data=[{"url": None, "seed": None}]))
    assert response.data == [UpscaledImage()]


# --- parse_response: malformed bodies ------------------------------------------------

MALFORMED = {
    "not json": "<html><body>502 Bad Gateway</body></html>",
    "empty body": "",
    "json list": "[]",
    "json string": '"ok"',
    "json null": "null",
    "missing created": '{"data": []}',
    "missing data": '{"created": "2000-01-23T04:56:07.000Z"}',
    "created int": _body(created=5),
    "created null": _body(created=None),
    "created not a date": _body(created="yesterday"),
    "created empty": _body(created=""),
    "data null": _body(data=None),
    "data int": _body(data=5),
    "data object": _body(data={}),
    "data empty string": _body(data=""),
    "data string": _body(data="ab"),
    "item int": _body(data=[5]),
    "item null": _body(data=[None]),
    "item string": _body(data=["x"]),
    "item list": _body(data=[[]]),
    "url int": _body(data=[{"url": 5}]),
    "seed str": _body(data=[{"seed": "5"}]),
    "seed bool": _body(data=[{"seed": True}]),
    "seed float": _body(data=[{"seed": 1.5}]),
    "resolution int": _body(data=[{"resolution": 2048}]),
    "prompt list": _body(data=[{"prompt": ["a"]}]),
    "is_image_safe str": _body(data=[{"is_image_safe": "true"}]),
    "is_image_safe int": _body(data=[{"is_image_safe": 1}]),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies_raise_response_format_error_quoting_the_body(body: str) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_response(body, 201)
    error = info.value
    assert isinstance(error, IdeogramError)
    assert error.body == body
    assert error.status == 201
    assert "201" in str(error)
    assert body in str(error)  # short bodies are quoted whole


def test_strings_are_not_coerced_to_ints_nor_ints_to_strings() -> None:
    with pytest.raises(
        ResponseFormatError, match=re.escape("expected int, got str @ $.data[0].seed")
    ):
        parse_response(_body(data=[{"seed": "5"}]))
    with pytest.raises(
        ResponseFormatError, match=re.escape("expected str, got int @ $.data[0].url")
    ):
        parse_response(_body(data=[{"url": 5}]))
    assert parse_response(_body(data=[{"seed": 5, "url": "5"}])).data == [
        UpscaledImage(seed=5, url="5")
    ]


@pytest.mark.parametrize(
    "body",
    [
        "x" * 100_000,
        "<html>" + "<p>gateway error</p>\n" * 5_000 + "</html>",
        json.dumps({"created": 5, "data": [{"prompt": "p" * 1000}] * 100}),
    ],
    ids=["huge text", "huge html", "huge wrong-shape json"],
)
def test_the_quoted_snippet_is_truncated_for_huge_bodies(body: str) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_response(body)
    message = str(info.value)
    assert len(message) < 1_000
    assert body[:20] in message
    assert "\n" not in message
    assert info.value.body == body  # the whole body stays available


@pytest.mark.parametrize(
    ("fields", "reasons"),
    [
        ({"created": 5}, ["expected a date string, got int @ $.created"]),
        ({"created": "yesterday"}, ["expected datetime @ $.created"]),
        ({"data": [{"seed": True}]}, ["expected int, got bool @ $.data[0].seed"]),
        ({"data": [{"is_image_safe": 1}]}, ["expected bool, got int @ $.data[0].is_image_safe"]),
        (
            {"created": 5, "data": [{}, {"url": 5, "prompt": ["a"]}]},
            [
                "expected a date string, got int @ $.created",
                "expected str, got int @ $.data[1].url",
                "expected str, got list @ $.data[1].prompt",
            ],
        ),
    ],
)
def test_a_wrong_shape_names_each_bad_field_what_it_expected_and_what_came(
    fields: dict[str, Any], reasons: list[str]
) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_response(_body(**fields))
    listed = re.search(r"wrong shape \((.*)\): '", str(info.value))
    assert listed is not None
    given = listed.group(1).split("; ")
    assert len(given) == len(reasons)
    for reason in reasons:
        assert any(item.endswith(reason) for item in given)


def test_a_body_parsed_without_a_status_is_reported_as_http_200() -> None:
    with pytest.raises(ResponseFormatError, match="HTTP 200 ") as info:
        parse_response("<html>")
    assert info.value.status == 200

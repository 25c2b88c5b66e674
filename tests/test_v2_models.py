"""The v2 options classes, the 8192 px rule and the v2 answers (v2/_options.py, v2/_answers.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs
import pytest

from ideogram_async import ResponseFormatError, ValidationError
from ideogram_async.v2 import (
    MAX_OUTPUT_SIDE,
    MODELS,
    AutoUpscaler,
    NanoBananaPro,
    PriceQuote,
    TopazBloom2,
    TopazRedefine,
    TopazStandard2,
    TopazTextRefine,
    TopazWonder35,
    V2Options,
    V2UpscaledImage,
    check_output_size,
    check_webhook_url,
    options_from_strings,
)
from ideogram_async.v2._answers import (
    QuoteItem,
    QuoteSummary,
    parse_generation,
    parse_quote,
    parse_upscale,
)

FACE = ("face_enhancement_strength", "face_enhancement_creativity")
FACE_MODELS: list[type[V2Options]] = [TopazStandard2, TopazTextRefine, TopazRedefine]
FACTOR_MODELS = [cls for cls in MODELS.values() if cls is not NanoBananaPro]
SEEDED_MODELS = [cls for cls in MODELS.values() if cls is not TopazStandard2]


def _build(cls: type[V2Options], **fields: Any) -> V2Options:
    return cls(**fields)


# --- the models and their form fields --------------------------------------------------


def test_every_model_is_registered_under_its_url_name() -> None:
    assert set(MODELS) == {
        "auto",
        "topaz-standard-2",
        "topaz-text-refine",
        "topaz-wonder-3-5",
        "topaz-bloom-2",
        "topaz-redefine",
        "nano-banana-pro",
    }
    assert all(cls.model == name for name, cls in MODELS.items())


@pytest.mark.parametrize("cls", list(MODELS.values()))
def test_nothing_set_sends_no_fields(cls: type[V2Options]) -> None:
    assert cls().form_fields() == {}


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        (
            AutoUpscaler(upscale_factor="x8", seed=7, internal=False, private=True),
            {"upscale_factor": "x8", "seed": "7", "internal": "false", "private": "true"},
        ),
        (
            TopazStandard2(
                upscale_factor="x4",
                denoise=0.25,
                sharpen=1,
                fix_compression=0.0,
                strength=0.01,
                subject_detection="foreground",
                face_enhancement=True,
                face_enhancement_strength=0.5,
                face_enhancement_creativity=1e-7,
                target_collection_id="col-1",
            ),
            {
                "upscale_factor": "x4",
                "denoise": "0.25",
                "sharpen": "1",
                "fix_compression": "0",
                "strength": "0.01",
                "subject_detection": "foreground",
                "face_enhancement": "true",
                "face_enhancement_strength": "0.5",
                "face_enhancement_creativity": "0.0000001",
                "target_collection_id": "col-1",
            },
        ),
        (
            TopazTextRefine(seed=0, subject_detection="all", face_enhancement=False),
            {"seed": "0", "subject_detection": "all", "face_enhancement": "false"},
        ),
        (
            TopazWonder35(enhancement_strength="low", upscale_factor="x2"),
            {"enhancement_strength": "low", "upscale_factor": "x2"},
        ),
        (
            TopazBloom2(prompt="crisp «leaves» & fog", creativity=9, color_preservation=False),
            {"prompt": "crisp «leaves» & fog", "creativity": "9", "color_preservation": "false"},
        ),
        (
            TopazRedefine(
                autoprompt=True,
                creativity=1,
                texture=5,
                detail=True,
                detail_strength=10,
                denoise=0.5,
                subject_detection="background",
            ),
            {
                "autoprompt": "true",
                "creativity": "1",
                "texture": "5",
                "detail": "true",
                "detail_strength": "10",
                "denoise": "0.5",
                "subject_detection": "background",
            },
        ),
        (
            NanoBananaPro(prompt="sharper", resolution_tier="4K", seed=2_147_483_647),
            {"prompt": "sharper", "resolution_tier": "4K", "seed": "2147483647"},
        ),
    ],
    ids=lambda value: getattr(value, "model", ""),
)
def test_form_fields_are_plain_strings_of_the_set_fields(
    options: V2Options, fields: dict[str, str]
) -> None:
    assert options.form_fields() == fields


def test_options_are_frozen() -> None:
    options = TopazBloom2(creativity=4)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.creativity = 5  # type: ignore[misc]


def test_topaz_standard_takes_no_seed_and_nano_banana_no_factor() -> None:
    with pytest.raises(TypeError, match="seed"):
        _build(TopazStandard2, seed=1)
    with pytest.raises(TypeError, match="upscale_factor"):
        _build(NanoBananaPro, upscale_factor="x2")
    assert NanoBananaPro().factor is None


@pytest.mark.parametrize("cls", FACTOR_MODELS)
def test_factor_defaults_to_x2_and_accepts_only_x2_x4_x8(cls: type[V2Options]) -> None:
    assert cls().factor == "x2"
    for factor in ("x2", "x4", "x8"):
        assert _build(cls, upscale_factor=factor).factor == factor
    for bad in ("x3", "X4", "4", 4, "x16"):
        with pytest.raises(ValidationError, match=r"upscale_factor must be one of x2, x4, x8"):
            _build(cls, upscale_factor=bad)


# --- ranges and types --------------------------------------------------------------------


RANGES: list[tuple[type[V2Options], str, float, float, bool]] = [
    *[(cls, "seed", 0, 2_147_483_647, True) for cls in SEEDED_MODELS],
    *[(cls, name, 0, 1, False) for cls in FACE_MODELS for name in ("denoise", "sharpen", *FACE)],
    (TopazStandard2, "fix_compression", 0, 1, False),
    (TopazTextRefine, "strength", 0.01, 1, False),
    (TopazBloom2, "creativity", 1, 9, True),
    (TopazRedefine, "creativity", 1, 9, True),
    (TopazRedefine, "texture", 1, 5, True),
    (TopazRedefine, "detail_strength", 0, 10, False),
]


def _with(cls: type[V2Options], name: str, value: object) -> V2Options:
    """Options with ``name`` set, plus what makes a face-enhancement strength legal."""
    fields: dict[str, object] = {name: value}
    if name in FACE:
        fields = {"face_enhancement": True, **dict.fromkeys(FACE, 0.5), name: value}
    return _build(cls, **fields)


@pytest.mark.parametrize(("cls", "name", "low", "high", "integer"), RANGES)
def test_bounds_are_accepted_and_values_just_outside_refused(
    cls: type[V2Options], name: str, low: float, high: float, integer: bool
) -> None:
    for value in (low, high):
        assert getattr(_with(cls, name, value), name) == value
    step = 1 if integer else 0.001
    for value in (low - step, high + step):
        with pytest.raises(
            ValidationError,
            match=rf"^{name} must be from {re.escape(str(low))} to {re.escape(str(high))},",
        ):
            _with(cls, name, value)


@pytest.mark.parametrize(("cls", "name", "low", "high", "integer"), RANGES)
def test_wrong_types_are_refused_with_the_field_named(
    cls: type[V2Options], name: str, low: float, high: float, integer: bool
) -> None:
    bad: list[object] = [True, "1", None if not integer else 1.0, float("nan")]
    for value in bad:
        if value is None:
            continue
        with pytest.raises(ValidationError, match=rf"^{name} must be"):
            _with(cls, name, value)


@pytest.mark.parametrize(
    ("cls", "name", "choices"),
    [
        *[(cls, "subject_detection", ("all", "foreground", "background")) for cls in FACE_MODELS],
        (TopazWonder35, "enhancement_strength", ("low", "medium", "high")),
        (NanoBananaPro, "resolution_tier", ("1K", "2K", "4K")),
    ],
)
def test_choices_are_spelled_exactly(
    cls: type[V2Options], name: str, choices: tuple[str, ...]
) -> None:
    for choice in choices:
        assert _build(cls, **{name: choice}).form_fields() == {name: choice}
    for bad in (choices[0].upper() if choices[0].islower() else choices[0].lower(), "", 1):
        with pytest.raises(ValidationError, match=rf"^{name} must be one of {', '.join(choices)}"):
            _build(cls, **{name: bad})


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (AutoUpscaler, "internal"),
        (TopazBloom2, "color_preservation"),
        (TopazRedefine, "autoprompt"),
        (TopazRedefine, "detail"),
        *[(cls, "face_enhancement") for cls in FACE_MODELS],
        *[(cls, "private") for cls in MODELS.values()],
    ],
)
def test_flags_take_only_bools(cls: type[V2Options], name: str) -> None:
    assert _build(cls, **{name: False}).form_fields() == {name: "false"}
    for bad in (1, "true", "yes"):
        with pytest.raises(ValidationError, match=rf"^{name} must be True or False"):
            _build(cls, **{name: bad})
    with pytest.raises(ValidationError, match=rf"^{name} must be True or False, got int 1$"):
        _build(cls, **{name: 1})


@pytest.mark.parametrize(
    ("cls", "limit"), [(TopazBloom2, 1024), (TopazRedefine, 1024), (NanoBananaPro, 2000)]
)
def test_prompt_length_is_capped_per_model(cls: type[V2Options], limit: int) -> None:
    assert _build(cls, prompt="p" * limit).form_fields() == {"prompt": "p" * limit}
    with pytest.raises(
        ValidationError, match=rf"prompt is {limit + 1} characters.*at most {limit}"
    ):
        _build(cls, prompt="p" * (limit + 1))
    with pytest.raises(ValidationError, match=r"^prompt must be a str, got bytes b'bytes'$"):
        _build(cls, prompt=b"bytes")


def test_target_collection_id_must_be_a_non_empty_str() -> None:
    for bad in ("", "  ", 5):
        with pytest.raises(ValidationError, match="target_collection_id"):
            AutoUpscaler(target_collection_id=bad)  # type: ignore[arg-type]


# --- rules across fields -----------------------------------------------------------------


@pytest.mark.parametrize("cls", FACE_MODELS)
def test_face_enhancement_requires_both_strengths(cls: type[V2Options]) -> None:
    with pytest.raises(ValidationError) as info:
        _build(cls, face_enhancement=True)
    assert str(info.value) == (
        "face_enhancement=True requires face_enhancement_strength and "
        f"face_enhancement_creativity (each from 0 to 1) on {cls.model}"
    )
    for given, missing in ((FACE[0], FACE[1]), (FACE[1], FACE[0])):
        with pytest.raises(ValidationError, match=rf"requires {missing} \(each from 0 to 1\)"):
            _build(cls, face_enhancement=True, **{given: 0.5})
    ok = _build(cls, face_enhancement=True, **dict.fromkeys(FACE, 0.5))
    assert ok.form_fields()["face_enhancement"] == "true"


@pytest.mark.parametrize("cls", FACE_MODELS)
@pytest.mark.parametrize("flag", [None, False])
def test_face_strengths_without_face_enhancement_are_refused(
    cls: type[V2Options], flag: bool | None
) -> None:
    with pytest.raises(ValidationError, match=r"applies only with face_enhancement=True"):
        _build(cls, face_enhancement=flag, face_enhancement_strength=0.5)
    with pytest.raises(ValidationError) as info:
        _build(cls, face_enhancement=flag, **dict.fromkeys(FACE, 0.5))
    assert str(info.value) == (
        "face_enhancement_strength and face_enhancement_creativity apply only with "
        f"face_enhancement=True on {cls.model}; set face_enhancement=True or leave them unset"
    )


def test_redefine_refuses_a_prompt_it_would_ignore() -> None:
    with pytest.raises(
        ValidationError,
        match=r"^topaz-redefine ignores prompt when autoprompt=True; pass one or the other$",
    ):
        TopazRedefine(autoprompt=True, prompt="ignored")
    assert TopazRedefine(autoprompt=False, prompt="used").form_fields()["prompt"] == "used"


# --- the 8192 px rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "factor"),
    [((4096, 4096), "x2"), ((4096, 10), "x2"), ((10, 2048), "x4"), ((1024, 1024), "x8")],
)
def test_outputs_up_to_8192_pass(size: tuple[int, int], factor: str) -> None:
    check_output_size(*size, model="topaz-bloom-2", factor=factor)


@pytest.mark.parametrize(
    ("size", "factor", "output", "fix"),
    [
        ((1025, 800), "x8", "8200x6400", "the largest factor that fits is x4"),
        ((2049, 100), "x4", "8196x400", "the largest factor that fits is x2"),
        ((100, 2049), "x8", "800x16392", "the largest factor that fits is x2"),
        ((2048, 10), "x8", "16384x80", "the largest factor that fits is x4"),
        (
            (4097, 10),
            None,
            "8194x20",
            "no factor fits (even x2 needs a source of at most 4096 px a side): "
            "shrink the image or use nano-banana-pro",
        ),
        ((3000, 5000), "x2", "6000x10000", "no factor fits"),
    ],
)
def test_outputs_over_8192_are_refused_naming_limit_size_and_fix(
    size: tuple[int, int], factor: str | None, output: str, fix: str
) -> None:
    with pytest.raises(ValidationError) as info:
        check_output_size(*size, model="topaz-redefine", factor=factor)
    message = str(info.value)
    assert f"over {MAX_OUTPUT_SIDE} px" in message
    assert f"{size[0]}x{size[1]} image at {factor or 'x2'}" in message
    assert f"would be {output}" in message
    assert fix in message
    assert "topaz-redefine" in message


def test_an_unknown_factor_is_refused_by_the_size_rule() -> None:
    with pytest.raises(ValidationError) as info:
        check_output_size(10, 10, model="topaz-bloom-2", factor="x3")
    assert str(info.value) == "upscale_factor must be one of x2, x4, x8, got 'x3'"


def test_nano_banana_pro_has_no_size_rule() -> None:
    check_output_size(20_000, 20_000, model="nano-banana-pro", factor=None)
    NanoBananaPro(resolution_tier="4K").check_source_size(20_000, 20_000)


def test_options_check_the_source_with_their_own_factor() -> None:
    TopazWonder35(upscale_factor="x4").check_source_size(2048, 2048)
    with pytest.raises(ValidationError, match="at x8 would be 16384x16384"):
        TopazWonder35(upscale_factor="x8").check_source_size(2048, 2048)
    with pytest.raises(ValidationError, match="at x2 would be 8194x8194"):
        AutoUpscaler().check_source_size(4097, 4097)


def test_webhook_url_must_be_https_and_at_most_2048_characters() -> None:
    good = "https://hooks.example/" + "a" * (2048 - len("https://hooks.example/"))
    assert check_webhook_url(good) == good
    for bad, why in [
        ("http://hooks.example/x", "https://"),
        ("https:///path-only", "https://"),
        (good + "a", "2049 characters"),
        (None, "must be a str"),
        (5, "^webhook_url must be a str, got int 5$"),
    ]:
        with pytest.raises(ValidationError, match=why):
            check_webhook_url(bad)


# --- answers -----------------------------------------------------------------------------

SYNC_BODY = {
    "generation_id": "gen-1",
    "width": 4096,
    "height": 2048,
    "seed": 12345,
    "data": [
        {
            "url": "https://cdn.example/a",
            "resolution": "4096x2048",
            "seed": 12345,
            "is_image_safe": True,
            "style_type": "new-field",
        },
        {"url": None, "resolution": "4096x2048", "seed": 12345, "is_image_safe": False},
    ],
}


def test_upscale_answer_is_typed_and_flags_a_withheld_image() -> None:
    answer = parse_upscale(json.dumps(SYNC_BODY), 200)
    assert (answer.generation_id, answer.width, answer.height, answer.seed) == (
        "gen-1",
        4096,
        2048,
        12345,
    )
    shown, withheld = answer.data
    assert isinstance(shown, V2UpscaledImage)
    assert shown.url == "https://cdn.example/a"
    assert not shown.withheld
    assert withheld.withheld
    assert withheld.url is None


def test_background_upscale_answer_has_no_data() -> None:
    body = {key: value for key, value in SYNC_BODY.items() if key != "data"}
    assert parse_upscale(json.dumps(body), 200, background=True).data == []
    with pytest.raises(ResponseFormatError, match="without an upscale result's 'data'"):
        parse_upscale(json.dumps(body), 200)


@pytest.mark.parametrize(
    "body",
    [
        "<html>bad gateway</html>",
        "[]",
        json.dumps({"width": 1}),
        json.dumps({**SYNC_BODY, "generation_id": 5}),
        json.dumps({**SYNC_BODY, "width": "4096"}),
        json.dumps({**SYNC_BODY, "data": [{"url": 5}]}),
    ],
)
def test_upscale_answer_of_the_wrong_shape_is_a_format_error(body: str) -> None:
    with pytest.raises(ResponseFormatError) as info:
        parse_upscale(body, 200)
    assert info.value.body == body


QUOTE = {
    "billing_identifier": "b",
    "quantity": 1,
    "usd_micros": 1,
    "credit_millis": 0,
    "qualifier": "exact",
}


def test_exact_quote() -> None:
    quote = parse_quote(
        json.dumps(
            {
                "object": "price_quote",
                "billing_identifier": "upscale-topaz-bloom-2",
                "quantity": 16,
                "usd_micros": 60000,
                "credit_millis": 1500,
                "qualifier": "exact",
            }
        ),
        200,
    )
    assert quote.exact
    assert quote.usd == Decimal("0.06")
    assert quote.upper_bound_usd == Decimal("0.06")
    assert (quote.quantity, quote.credit_millis, quote.upper_bound_usd_micros) == (16, 1500, None)


def test_estimated_quote_with_upper_bound() -> None:
    quote = parse_quote(
        json.dumps(
            {
                "billing_identifier": "b",
                "quantity": 1,
                "usd_micros": 1,
                "credit_millis": 0,
                "qualifier": "estimate",
                "upper_bound_usd_micros": 2_500_001,
            }
        ),
        200,
    )
    assert not quote.exact
    assert quote.usd == Decimal("0.000001")
    assert quote.upper_bound_usd == Decimal("2.500001")


def test_a_quote_that_also_names_a_generation_is_still_a_quote() -> None:
    quote = parse_quote(json.dumps({**QUOTE, "generation_id": "gen-1"}), 200)
    assert quote.usd_micros == 1


def test_a_dry_run_answered_with_a_result_says_it_may_have_been_billed() -> None:
    body = json.dumps(SYNC_BODY)
    with pytest.raises(ResponseFormatError, match="may have run and billed") as info:
        parse_quote(body, 201)
    assert str(info.value).startswith("the service answered a dry run (HTTP 201) with an")
    assert (info.value.status, info.value.body) == (201, body)
    with pytest.raises(ResponseFormatError, match="'usd_micros', 'credit_millis'"):
        parse_quote(
            json.dumps(
                {"billing_identifier": "b", "quantity": 1, "usd_micros": True, "qualifier": "x"}
            ),
            200,
        )


def test_generations_pending_completed_failed() -> None:
    pending = parse_generation(
        json.dumps({"generation_id": "g", "status": "pending", "created": "2026-01-02T03:04:05Z"}),
        200,
    )
    assert not pending.done
    assert pending.created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    failed = parse_generation(
        json.dumps(
            {
                "generation_id": "g",
                "status": "failed",
                "created": "2026-01-02 03:04:05+00:00",
                "failure_reason": "content_policy_violation",
            }
        ),
        200,
    )
    assert failed.done
    assert failed.failure_reason == "content_policy_violation"
    completed = parse_generation(
        json.dumps(
            {
                "generation_id": "g",
                "status": "completed",
                "response_type": "url",
                "data": [{**SYNC_BODY["data"][0], "object_type": "image", "asset_id": "a1"}],  # type: ignore[index]
                "usage_cost_usd_micros": 120000,
            }
        ),
        200,
    )
    assert completed.done
    assert completed.data[0].asset_id == "a1"
    assert completed.usage_cost_usd_micros == 120000
    with pytest.raises(ResponseFormatError, match="'status'"):
        parse_generation(json.dumps({"generation_id": "g"}), 200)


# --- options from text (the command line) ------------------------------------------------


def test_options_from_strings_convert_by_field_type() -> None:
    options = options_from_strings(
        "topaz-redefine",
        {
            "creativity": "4",
            "detail": "TRUE",
            "detail_strength": "2.5",
            "subject_detection": "all",
            "prompt": "fog, 4 birds",
            "upscale_factor": "x4",
        },
    )
    assert options == TopazRedefine(
        creativity=4,
        detail=True,
        detail_strength=2.5,
        subject_detection="all",
        prompt="fog, 4 birds",
        upscale_factor="x4",
    )
    # Text fields stay text, even when they read as a number.
    assert options_from_strings("nano-banana-pro", {"prompt": "4", "seed": "4"}) == NanoBananaPro(
        prompt="4", seed=4
    )


@pytest.mark.parametrize(
    ("model", "values", "message"),
    [
        ("topaz-standard", {}, "unknown model 'topaz-standard'; choose one of auto, "),
        (
            "topaz-bloom-2",
            {"texture": "2"},
            "topaz-bloom-2 has no option 'texture'; its options are private, "
            "target_collection_id, upscale_factor, seed, prompt, creativity, color_preservation",
        ),
        ("topaz-standard-2", {"seed": "2"}, "has no option 'seed'"),
        (
            "topaz-bloom-2",
            {"creativity": "4.5"},
            "creativity must be an int from 1 to 9, got str '4.5'",
        ),
        ("topaz-bloom-2", {"creativity": "high"}, "an int from 1 to 9, got str 'high'"),
        (
            "topaz-redefine",
            {"denoise": "lots"},
            "denoise must be a number from 0 to 1, got str 'lots'",
        ),
        ("auto", {"internal": "yes"}, "internal must be true or false, got 'yes'"),
        ("topaz-bloom-2", {"creativity": "12"}, "creativity must be from 1 to 9, got 12"),
        ("nano-banana-pro", {"resolution_tier": "8K"}, "resolution_tier must be one of 1K"),
    ],
)
def test_options_from_strings_refuse_what_the_model_does_not_take(
    model: str, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        options_from_strings(model, values)


# --- batch quotes ------------------------------------------------------------------------


def _quote(usd_micros: int, qualifier: str = "exact", bound: int | None = None) -> PriceQuote:
    return PriceQuote(
        billing_identifier="b",
        quantity=1,
        usd_micros=usd_micros,
        credit_millis=usd_micros // 40,
        qualifier=qualifier,
        upper_bound_usd_micros=bound,
    )


def test_quote_summary_sums_exact_and_estimated_apart() -> None:
    quotes = [
        _quote(60_000),
        _quote(20_000, "estimate", 50_000),
        _quote(10_000, "estimate"),
        _quote(30_001),
    ]
    items = [
        QuoteItem(index=i, source=f"{i}.png", quote=q, error=None) for i, q in enumerate(quotes)
    ]
    refused = QuoteItem(index=4, source="big.png", quote=None, error=ValidationError("too big"))
    summary = QuoteSummary(items=[*items, refused])
    assert summary.exact_usd == Decimal("0.090001")
    assert summary.estimated_usd == Decimal("0.03")
    assert summary.total_usd == Decimal("0.120001")
    assert summary.upper_bound_usd == Decimal("0.150001")
    assert summary.credit_millis == sum(q.credit_millis for q in quotes)
    assert summary.failed == [refused]
    assert QuoteSummary(items=[]).total_usd == 0


@pytest.mark.parametrize(
    ("parse", "body", "why"),
    [
        (parse_upscale, "<html>", "with a body that is not JSON: '<html>'; check base_url"),
        (parse_upscale, "[]", "with JSON that is not an upscale result"),
        (parse_quote, "[]", "with JSON that is not a price quote"),
        (parse_generation, "[]", "with JSON that is not a generation"),
        (parse_generation, "{}", "without a generation's 'generation_id', 'status'"),
        (parse_quote, json.dumps({"usd_micros": 1}), "without a price quote's"),
        (parse_quote, json.dumps({**QUOTE, "upper_bound_usd_micros": "x"}), "with a body of"),
        (parse_upscale, json.dumps({**SYNC_BODY, "seed": "x"}), "with a body of"),
        (
            parse_generation,
            json.dumps({"generation_id": "g", "status": "s", "data": 1}),
            "with a body of",
        ),
    ],
)
def test_an_answer_of_the_wrong_shape_keeps_its_status_and_body(
    parse: Callable[[str, int], object], body: str, why: str
) -> None:
    with pytest.raises(ResponseFormatError, match=f"^the service answered HTTP 201 {why}") as info:
        parse(body, 201)
    assert (info.value.status, info.value.body) == (201, body)

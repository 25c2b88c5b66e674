"""Ideogram's v2 upscalers: per-model options, typed answers, and the ``client.v2`` calls.

``POST /v2/image/upscale/{model}`` takes the source image as the file part ``image``
and every option as a plain form field. Each model has its own options class; build
one and pass it to ``client.v2``::

    big = await client.v2.upscale("photo.png", TopazBloom2(upscale_factor="x4"))

The v1 and v2 types are named in parallel: :class:`UpscaleRequest` /
:class:`V2Options` (one subclass per model), :class:`UpscaleResponse` /
:class:`V2UpscaleResponse`, :class:`UpscaledImage` / :class:`V2UpscaledImage`.
"""

from ._answers import (
    Generation,
    PriceQuote,
    QuoteItem,
    QuoteSummary,
    V2UpscaledImage,
    V2UpscaleResponse,
)
from ._options import (
    MAX_FILE_SIZE,
    MAX_OUTPUT_SIDE,
    MODELS,
    AutoUpscaler,
    Factor,
    NanoBananaPro,
    TopazBloom2,
    TopazRedefine,
    TopazStandard2,
    TopazTextRefine,
    TopazWonder35,
    V2Options,
    check_output_size,
    check_webhook_url,
    options_from_strings,
)
from ._resource import QuoteInput, V2Resource

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_OUTPUT_SIDE",
    "MODELS",
    "AutoUpscaler",
    "Factor",
    "Generation",
    "NanoBananaPro",
    "PriceQuote",
    "QuoteInput",
    "QuoteItem",
    "QuoteSummary",
    "TopazBloom2",
    "TopazRedefine",
    "TopazStandard2",
    "TopazTextRefine",
    "TopazWonder35",
    "V2Options",
    "V2Resource",
    "V2UpscaleResponse",
    "V2UpscaledImage",
    "check_output_size",
    "check_webhook_url",
    "options_from_strings",
]

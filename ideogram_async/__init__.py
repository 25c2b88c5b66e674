"""Asyncio client for upscaling images at volume through the Ideogram upscale endpoint.

>>> async with IdeogramClient(base_url="https://proxy.example") as client:
...     result = await client.upscale("photo.png", UpscaleRequest(prompt="crisp"))
"""

import logging

from . import telemetry
from ._version import __version__
from .batch import BatchInput, BatchResult, BatchRun, UpscaleJob
from .client import Flavor, IdeogramClient, Timeouts
from .errors import (
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
    ImageChangedError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    SharedAllowanceError,
    ValidationError,
    WebhookVerificationError,
)
from .limits import Allowance, AllowanceChange, Budget, ChangeReason, LocalAllowance, LocalBudget
from .models import MagicPrompt, UpscaledImage, UpscaleRequest, UpscaleResponse
from .retry import RetryEvent, RetryPolicy
from .uploads import ImageInput
from .v2 import (
    AutoUpscaler,
    Generation,
    NanoBananaPro,
    PriceQuote,
    QuoteItem,
    QuoteSummary,
    TopazBloom2,
    TopazRedefine,
    TopazStandard2,
    TopazTextRefine,
    TopazWonder35,
    V2Options,
    V2Resource,
    V2UpscaledImage,
    V2UpscaleResponse,
)

# A library stays silent until the application configures logging.
logging.getLogger("ideogram_async").addHandler(logging.NullHandler())
# ... unless IDEOGRAM_LOG=info|debug asks for its lines on stderr.
telemetry.log_from_env()

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "Allowance",
    "AllowanceChange",
    "AuthenticationError",
    "AutoUpscaler",
    "BadRequestError",
    "BatchInput",
    "BatchResult",
    "BatchRun",
    "Budget",
    "BudgetExceededError",
    "ChangeReason",
    "ClientClosedError",
    "Flavor",
    "Generation",
    "GenerationFailedError",
    "IdeogramClient",
    "IdeogramError",
    "ImageChangedError",
    "ImageInput",
    "LocalAllowance",
    "LocalBudget",
    "MagicPrompt",
    "NanoBananaPro",
    "NotFoundError",
    "PaymentRequiredError",
    "PriceQuote",
    "QuoteItem",
    "QuoteSummary",
    "RateLimitError",
    "ResponseFormatError",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "SharedAllowanceError",
    "Timeouts",
    "TopazBloom2",
    "TopazRedefine",
    "TopazStandard2",
    "TopazTextRefine",
    "TopazWonder35",
    "UpscaleJob",
    "UpscaleRequest",
    "UpscaleResponse",
    "UpscaledImage",
    "V2Options",
    "V2Resource",
    "V2UpscaleResponse",
    "V2UpscaledImage",
    "ValidationError",
    "WebhookVerificationError",
    "__version__",
]

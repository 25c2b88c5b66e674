"""Asyncio client for upscaling images at volume through the Ideogram upscale endpoint.

>>> async with IdeogramClient(base_url="https://proxy.example") as client:
...     result = await client.upscale("photo.png", UpscaleRequest(prompt="crisp"))
"""

from ._version import __version__
from .batch import BatchInput, BatchResult, BatchRun, UpscaleJob
from .client import Flavor, IdeogramClient, Timeouts
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    IdeogramError,
    ImageChangedError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    ValidationError,
)
from .models import MagicPrompt, UpscaledImage, UpscaleRequest, UpscaleResponse
from .retry import RetryEvent, RetryPolicy
from .uploads import ImageInput

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchInput",
    "BatchResult",
    "BatchRun",
    "ClientClosedError",
    "Flavor",
    "IdeogramClient",
    "IdeogramError",
    "ImageChangedError",
    "ImageInput",
    "MagicPrompt",
    "NotFoundError",
    "PaymentRequiredError",
    "RateLimitError",
    "ResponseFormatError",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "Timeouts",
    "UpscaleJob",
    "UpscaleRequest",
    "UpscaleResponse",
    "UpscaledImage",
    "ValidationError",
    "__version__",
]

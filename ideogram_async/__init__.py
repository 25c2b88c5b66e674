"""Asyncio client for upscaling images at volume through the Ideogram upscale endpoint.

>>> async with IdeogramClient(base_url="https://proxy.example") as client:
...     result = await client.upscale("photo.png", UpscaleRequest(prompt="crisp"))
"""

import logging

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

# A library stays silent until the application configures logging.
logging.getLogger("ideogram_async").addHandler(logging.NullHandler())

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

"""The client's settings: each check's message word for word, and each default.

``Settings.resolve`` is what ``IdeogramClient(...)`` runs first; a wrong value must fail
there, before anything is sent, with a message that names the setting and the fix.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from ideogram_async import LocalAllowance, RetryPolicy, Timeouts, ValidationError
from ideogram_async._checks import int_at_least, of_type, positive_number, seconds
from ideogram_async._settings import OFFICIAL_BASE_URL, Flavor, Settings

BASE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEOGRAM_API_KEY", raising=False)
    monkeypatch.delenv("IDEOGRAM_BASE_URL", raising=False)


def resolve(**overrides: Any) -> Settings:
    arguments: dict[str, Any] = {
        "api_key": "k",
        "base_url": BASE,
        "flavor": "proxy",
        "allowance": None,
        "adaptive": True,
        "requests_per_second": None,
        "timeouts": None,
        "retry": None,
        "max_file_size": 1,
        "max_download_size": 1,
        "max_response_size": 1,
        "session": None,
        "on_retry": None,
    }
    arguments.update(overrides)
    return Settings.resolve(**arguments)


def message(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        resolve(**overrides)
    return str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"api_key": None},
            "no API key: pass api_key= or set the IDEOGRAM_API_KEY environment variable",
        ),
        (
            {"api_key": " \t"},
            "no API key: pass api_key= or set the IDEOGRAM_API_KEY environment variable",
        ),
        (
            {"base_url": None},
            "no base URL for the proxy flavor: pass base_url= or set IDEOGRAM_BASE_URL "
            "(or use flavor='official' for api.ideogram.ai)",
        ),
        ({"flavor": "nope"}, "flavor must be 'proxy' or 'official', got 'nope'"),
        ({"on_retry": "log"}, "on_retry must be a function taking a RetryEvent, got str"),
        (
            {"allowance": LocalAllowance(3), "adaptive": False},
            "adaptive= applies to an allowance given as a number; an Allowance object "
            "brings its own setting",
        ),
        (
            {"allowance": 0},
            "allowance must be a number of images in flight >= 1 or an Allowance, got 0; "
            "the service's default allowance is 10",
        ),
        (
            {"allowance": True},
            "allowance must be a number of images in flight >= 1 or an Allowance, got True; "
            "the service's default allowance is 10",
        ),
        (
            {"allowance": 2.0},
            "allowance must be a number of images in flight >= 1 or an Allowance, got 2.0; "
            "the service's default allowance is 10",
        ),
        ({"adaptive": "yes"}, "adaptive must be a bool, got str"),
        ({"requests_per_second": 0}, "requests_per_second must be a number > 0 or None, got 0"),
        ({"max_file_size": 0}, "max_file_size must be an int >= 1, got 0"),
        ({"max_file_size": True}, "max_file_size must be an int >= 1, got True"),
        ({"max_file_size": "big"}, "max_file_size must be an int >= 1, got 'big'"),
        ({"api_key": 5}, "api_key must be a str, got int"),
        (
            {"api_key": "sk-\u0100"},
            "the API key has a character at position 4 that cannot go in an HTTP header "
            "(outside Latin-1); copy the key again (keys are plain text)",
        ),
        ({"max_download_size": 0}, "max_download_size must be an int >= 1, got 0"),
        ({"max_response_size": 0}, "max_response_size must be an int >= 1, got 0"),
        ({"timeouts": 5}, "timeouts must be a Timeouts, got int"),
        ({"retry": 3}, "retry must be a RetryPolicy, got int"),
        (
            {"base_url": "ftp://host"},
            "base_url must start with http:// or https://, got 'ftp://host'",
        ),
        (
            {"base_url": "http://:80"},
            "base_url is not a valid URL: 'http://:80'; check its host and port",
        ),
        (
            {"base_url": "http://host:99999"},
            "base_url is not a valid URL: 'http://host:99999'; check its host and port",
        ),
        (
            {"base_url": "https://joe:secret@host"},
            "base_url must not contain a user name or password ('https://***@host'): "
            "credentials in a URL end up in logs; pass the key as api_key=",
        ),
        (
            {"base_url": "https://joe:secret@host/?next=//ann:hers@other"},
            "base_url must not contain a user name or password "
            "('https://***@host/?next=//***@other'): "
            "credentials in a URL end up in logs; pass the key as api_key=",
        ),
        (
            {"base_url": "https://joe@host"},
            "base_url must not contain a user name or password ('https://***@host'): "
            "credentials in a URL end up in logs; pass the key as api_key=",
        ),
    ],
)
def test_each_wrong_setting_is_named_with_its_fix(overrides: dict[str, Any], expected: str) -> None:
    assert message(**overrides) == expected


@pytest.mark.parametrize("header", ["Authorization", "api-key"])
async def test_a_session_that_sends_a_key_header_is_refused(header: str) -> None:
    async with aiohttp.ClientSession(headers={header: "x"}) as session:
        assert message(session=session) == (
            "the session passed in sends an Authorization or Api-Key header with every "
            "request, which would leak the key to image hosts; pass api_key= instead"
        )


async def test_a_session_with_other_headers_is_taken() -> None:
    async with aiohttp.ClientSession(headers={"X-Trace": "1"}) as session:
        assert resolve(session=session).key.reveal() == "k"


def test_the_defaults() -> None:
    settings = resolve(api_key="  sk-1 ", base_url=BASE + "/")
    assert settings.key.reveal() == "sk-1"
    assert settings.base_url == BASE
    assert resolve(base_url=BASE + "/X/").base_url == BASE + "/X"  # only the slash goes
    assert resolve(allowance=1).allowance.maximum == 1
    assert settings.url == BASE + "/ideogram/upscale"
    assert settings.flavor is Flavor.PROXY
    assert isinstance(settings.allowance, LocalAllowance)
    assert (settings.allowance.maximum, settings.allowance.limit) == (10, 10)
    assert settings.requests_per_second is None
    assert settings.timeouts == Timeouts()
    assert settings.retry == RetryPolicy()


def test_a_key_with_the_last_latin_1_character_is_taken() -> None:
    assert resolve(api_key="sk-\xff").key.reveal() == "sk-\xff"


def test_the_official_flavor_defaults_to_ideogram_and_its_own_path() -> None:
    settings = resolve(base_url=None, flavor="official")
    assert settings.base_url == OFFICIAL_BASE_URL
    assert settings.url == OFFICIAL_BASE_URL + "/upscale"
    assert settings.flavor is Flavor.OFFICIAL


def test_the_environment_fills_in_the_key_and_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", "from-env")
    monkeypatch.setenv("IDEOGRAM_BASE_URL", "https://proxy.example")
    settings = resolve(api_key=None, base_url=None)
    assert (settings.key.reveal(), settings.base_url) == ("from-env", "https://proxy.example")
    assert resolve(api_key="given", base_url=BASE).key.reveal() == "given"


def test_the_given_values_are_kept() -> None:
    allowance = LocalAllowance(4)
    timeouts, retry = Timeouts(connect=1.0), RetryPolicy(attempts=2)
    settings = resolve(
        allowance=allowance,
        requests_per_second=2.5,
        timeouts=timeouts,
        retry=retry,
        max_file_size=7,
        max_download_size=8,
        max_response_size=9,
    )
    assert settings.allowance is allowance
    assert (settings.timeouts, settings.retry) == (timeouts, retry)
    assert settings.requests_per_second == 2.5
    assert (settings.max_file_size, settings.max_download_size) == (7, 8)
    assert settings.max_response_size == 9


@pytest.mark.parametrize(("allowance", "adaptive"), [(None, False), (3, True), (3, False)])
def test_a_number_builds_a_local_allowance(allowance: int | None, adaptive: bool) -> None:
    built = resolve(adaptive=adaptive, allowance=allowance).allowance
    assert isinstance(built, LocalAllowance)
    assert built.maximum == (allowance or 10)
    assert built.limit == (built.maximum if not adaptive else min(built.maximum, 10))
    assert repr(built).endswith(f"adaptive={adaptive})")


def test_the_checkers_take_what_they_allow() -> None:
    assert int_at_least("n", 3, 3) == 3
    assert positive_number("x", 0.5) == 0.5
    assert positive_number("x", None, or_none=True) is None
    assert of_type("t", None, Timeouts) is None
    with pytest.raises(ValidationError, match=r"^x must be a number > 0, got None$"):
        positive_number("x", None)
    with pytest.raises(ValidationError, match=r"^n must be an int >= 3, got 2$"):
        int_at_least("n", 2, 3)
    with pytest.raises(
        ValidationError, match=r"^Timeouts.attempt must be a finite number of seconds > 0, got 0$"
    ):
        Timeouts(attempt=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, True, "1"])
def test_one_seconds_check_refuses_what_is_not_a_finite_duration(value: object) -> None:
    with pytest.raises(ValidationError, match=r"^t must be a finite number of seconds > 0, got"):
        seconds("t", value)
    with pytest.raises(ValidationError, match="finite number of seconds"):
        Timeouts(connect=value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="finite number of seconds >= 0"):
        RetryPolicy(backoff_base=value)  # type: ignore[arg-type]


def test_the_seconds_check_takes_zero_and_none_only_when_asked() -> None:
    assert seconds("t", 0, zero=True) == 0
    assert seconds("t", None, none=True) is None
    with pytest.raises(ValidationError, match=r"> 0, or None for no limit, got 0$"):
        RetryPolicy(deadline=0)
    with pytest.raises(ValidationError, match=r"got None$"):
        seconds("t", None)

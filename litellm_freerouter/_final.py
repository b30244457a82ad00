"""litellm's error classes, as subclasses that say "retrying will not help".

freerouter has already tried several models when it gives up, or the account's day is used up:
a caller that retries by exact class (aider looks its retry rule up by ``type(error)``) should
show the error rather than send the same prompt again and again, each time spending the daily
quota. Every ``isinstance`` check, and the proxy's status code, still see litellm's class.
"""

from __future__ import annotations

from litellm import exceptions


class RateLimitError(exceptions.RateLimitError):
    """The free daily quota is used up, or every model tried was rate-limited."""


class ServiceUnavailableError(exceptions.ServiceUnavailableError):
    """Every model tried for the request failed, or every one is cooling down past the wait."""


class Timeout(exceptions.Timeout):
    """Every model tried for the request was too slow."""

"""The state interface: a few named entries, each updated atomically, each with an expiry.

The router's knowledge (cooldowns, latency statistics, the account's limits) is kept as small
JSON entries addressed by a *space* and a *name*:

===========  ======================  =============================================  ==========
space        name                    data                                           expires
===========  ======================  =============================================  ==========
``model``    a model id              first-token samples, decayed success/failure   7 days on
                                     counts, prior, wins, attempts                  from write
``cool``     a model id              ``until``, ``reason``                          ``until``
``account``  ``block``               ``until``, the failure that stopped calls      ``until``
``account``  ``quota``               daily ``limit``, ``remaining``, ``resets_at``  a day later
===========  ======================  =============================================  ==========

A store knows nothing of what the entries mean: :class:`~litellm_freerouter.health.Health`
reads them all at once (``load``) and changes one at a time through a pure function of the old
entry (``update``), which the store runs atomically, so concurrent writers never lose an update.
Times are wall-clock epoch seconds, because they are compared across processes and hosts.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

MODEL = "model"
COOL = "cool"
ACCOUNT = "account"

Key = tuple[str, str]  # (space, name)


@dataclass(frozen=True, slots=True)
class Entry:
    data: Mapping[str, Any]
    expires: float | None  # epoch seconds; None: kept until cleared

    def live(self, now: float) -> bool:
        return self.expires is None or self.expires > now


# What an update does: the new entry from the old one (None: there was none / delete it).
# It may run more than once (an optimistic transaction retries), so it must be pure.
Change = Callable[[Entry | None], Entry | None]
Snapshot = dict[Key, Entry]


@dataclass(frozen=True, slots=True)
class CachedCatalog:
    models: tuple[Mapping[str, Any], ...]  # FreeModel.as_dict() of each
    fetched_at: float


class StateUnavailable(Exception):
    """A store could not be opened or used; the caller carries on in memory.

    ``busy``: only for now (another process holds the file's lock), not damaged.
    """

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


class StateStore(ABC):
    """Where the router's knowledge lives; scoped to one endpoint and key on construction."""

    kind: str = ""  # "memory", "sqlite" or "redis"
    # False: nobody else can write here, so there is nothing to read back before a request.
    shared: ClassVar[bool] = True
    # The exceptions that mean "the backend is unavailable", as opposed to a bug.
    errors: tuple[type[BaseException], ...] = ()
    where: str = ""

    @abstractmethod
    def load(self, now: float) -> Snapshot:
        """Every live entry of this scope."""

    @abstractmethod
    def update(self, space: str, name: str, change: Change, now: float) -> Entry | None:
        """Apply ``change`` to one entry atomically; return the entry as written."""

    @abstractmethod
    def load_catalog(self) -> CachedCatalog | None:
        """The last free-model list saved for this endpoint, however old."""

    @abstractmethod
    def save_catalog(self, models: Sequence[Mapping[str, Any]], fetched_at: float) -> None: ...

    @abstractmethod
    def clear(self, everything: bool = False) -> int:
        """Forget this scope's entries and catalogue (every scope's with ``everything``);
        returns how many entries went."""

    def ping(self) -> None:
        """Raise one of ``errors`` unless the backend answers."""
        self.load(time.time())

    @property
    def problem(self) -> str | None:
        """Why this store is not doing its job right now, for ``freerouter doctor``."""
        return None

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to close
        pass


def digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]

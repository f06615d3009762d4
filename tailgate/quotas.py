"""Quota policy: which buckets a request is charged to, admission and settlement.

A request is charged to every bucket its grants name (templates expanded for the caller).
Admission needs every bucket to be **positive**; it then *reserves* the request's estimated
cost on each, and settlement replaces that estimate with the real cost — both through the
:class:`~tailgate.ledger.QuotaLedger`, in atomic store transactions. A quota that cannot be
used refuses the requests it applies to (429); a store that cannot be asked refuses them too
(503): quotas fail closed.

Overspend bound (``docs/quotas.md`` has the proof): over any period, what a bucket is charged
is less than its balance at the start, plus what it refilled, plus the reservation of the last
request admitted, plus whatever real costs exceeded their estimates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tailgate.config.model import BucketRef, Config, QuotaDef
from tailgate.config.units import format_dollars, parse_dollars
from tailgate.deadline import expire
from tailgate.errors import BadRequest, NotFound, QuotaExceeded, QuotaUnavailable
from tailgate.identity import Identity
from tailgate.ledger import (
    NEVER_REFILLS_RETRY_AFTER,
    BucketSpec,
    BucketState,
    LedgerUnavailable,
    QuotaIndex,
    QuotaLedger,
    Verdict,
    accrued,
    now_us,
    quota_of,
    refill,
    retry_after,
    spec_of,
)

if TYPE_CHECKING:
    from tailgate.pricing import PriceBook
    from tailgate.routing import Route

__all__ = [
    "FAIL_CLOSED_RETRY_AFTER",
    "NEVER_REFILLS_RETRY_AFTER",
    "BucketSpec",
    "BucketState",
    "LedgerUnavailable",
    "QuotaIndex",
    "QuotaLedger",
    "QuotaPolicy",
    "QuotaUnavailable",
    "Reservation",
    "accrued",
    "expand",
    "format_dollars",
    "parse_dollars",
    "quota_of",
    "refill",
    "retry_after",
    "spec_of",
]

log = logging.getLogger("tailgate.quotas")

FAIL_CLOSED_RETRY_AFTER = 60
"""Retry-After (seconds) on a request refused because a quota it uses is misconfigured."""
_MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def expand(ref: BucketRef, identity: Identity, quotas: Mapping[str, QuotaDef]) -> tuple[str, QuotaDef | None]:
    """The bucket name a reference stands for, and its definition (None when undefined).

    A reference names a quota key exactly. ``<user>`` becomes the caller's principal (a login
    or tag string), ``<node>`` the caller's stable node id (the principal when the caller has
    no node, e.g. a gateway API key).
    """
    name = ref.template.replace("<user>", identity.principal).replace(
        "<node>", identity.node_id or identity.principal
    )
    return name, quotas.get(ref.template)


# -- the per-configuration policy --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    buckets: tuple[BucketSpec, ...]
    amount: int
    """Nanodollars deducted at admission from every bucket; settlement gives it back."""


class QuotaPolicy:
    """Admission and settlement for one configuration."""

    def __init__(self, config: Config, prices: PriceBook, ledger: QuotaLedger) -> None:
        self._quotas = config.quotas
        self._index = QuotaIndex(config.quotas)
        self._prices = prices
        self._ledger = ledger

    def buckets_for(
        self, identity: Identity, refs: Iterable[BucketRef]
    ) -> tuple[list[BucketSpec], list[str]]:
        """The bucket specs the refs stand for, and the problems that make them fail closed."""
        specs: dict[str, BucketSpec] = {}
        problems: list[str] = []
        for ref in refs:
            name, quota = expand(ref, identity, self._quotas)
            if quota is None:
                problems.append(f'quota "{ref.template}" is not defined in "quotas"')
            elif quota.invalid is not None:
                problems.append(f'quota "{quota.name}" cannot be used: {quota.invalid}')
            elif "<" in name or ">" in name:
                problems.append(f'quota bucket "{ref.template}" has an unsupported template')
            else:
                specs.setdefault(name, spec_of(name, quota))
        return list(specs.values()), problems

    async def admit(
        self,
        identity: Identity,
        route: Route,
        refs: Sequence[BucketRef],
        body: Mapping[str, Any],
        body_size: int,
        *,
        alone: bool = False,
    ) -> Reservation:
        """Reserve the request's estimated cost on every bucket, or raise QuotaExceeded (429).

        Raises :class:`QuotaUnavailable` (503) when the store cannot be asked: quotas fail closed.
        """
        specs, problems = self.buckets_for(identity, refs)
        if problems:
            raise QuotaExceeded(
                "request refused because a quota is misconfigured: " + "; ".join(problems),
                retry_after=FAIL_CLOSED_RETRY_AFTER,
                buckets=tuple(s.name for s in specs),
            )
        estimate = self._prices.estimate(
            route.provider, route.model, input_bytes=body_size, max_output_tokens=_max_output(body)
        )
        exhausted = await self._verdict(specs, estimate, inline=alone)
        if exhausted:
            now = now_us()
            wait = max(retry_after(s, now) for s in exhausted)
            names = ", ".join(s.name for s in exhausted)
            raise QuotaExceeded(
                f"quota exceeded: bucket {names} has no budget left; it refills in about {wait} seconds",
                retry_after=wait,
                buckets=tuple(s.name for s in exhausted),
            )
        return Reservation(tuple(specs), estimate)

    async def _verdict(self, specs: list[BucketSpec], estimate: int, *, inline: bool) -> list[BucketState]:
        """The ledger's answer to one admission; :class:`QuotaUnavailable` when it cannot answer.

        First from this process's leases, in memory (see :meth:`QuotaLedger.admit_leased`).
        ``inline``: the request is alone, so deciding on this thread costs less than two thread
        handoffs; under concurrency the ledger's thread decides many admissions per transaction.
        """
        if self._ledger.admit_leased(specs, estimate):
            return []
        if inline:
            now = self._ledger.admit_now(specs, estimate)
            if now is not None:
                return now
        future = self._ledger.submit(specs, estimate)
        done: Verdict | None = None
        try:
            done = await _answer(future, self._ledger.stall_timeout)
        finally:
            if done is None:  # the caller left, or the store hangs: give back what it reserves
                future.add_done_callback(lambda f: self._release_if_admitted(f, specs, estimate))
        if done is None:
            wait = 1
        else:
            error = done.exception()
            if error is None:
                return done.result()
            if not isinstance(error, LedgerUnavailable):
                raise error
            wait = error.retry_after
        raise QuotaUnavailable(
            "quota balances cannot be checked right now (the database is unavailable), so requests"
            f" with quotas are refused; try again in {wait} seconds",
            retry_after=wait,
        )

    def _release_if_admitted(self, future: Verdict, specs: list[BucketSpec], amount: int) -> None:
        if not future.cancelled() and future.exception() is None and not future.result():
            self._ledger.settle(specs, amount, 0, wait=False)

    def settle(self, reservation: Reservation, cost: int | None, *, wait: bool = True) -> None:
        """Charge the real cost to every bucket of ``reservation``; never raises. Called off the
        event loop. With ``wait`` it returns once the charge is stored (unless the store is
        down); the recorder passes ``wait=False`` and flushes the ledger once per batch instead.

        ``None`` means the answer was served but its cost is unknown: the reservation stays
        charged. ``0`` gives it all back (nothing was served, or the model is unpriced).
        """
        charge = reservation.amount if cost is None else cost
        try:
            self._ledger.settle(reservation.buckets, reservation.amount, charge, wait=wait)
        except Exception:
            log.exception("could not settle a quota reservation of %d nanodollars", charge)

    def refill(self, bucket: str, amount: int) -> BucketState:
        quota = self._index.find(bucket)
        if quota is None or quota.invalid is not None:
            raise NotFound(f'no quota bucket "{bucket}"')
        if amount <= 0:
            raise BadRequest("the refill amount must be positive")
        return self._ledger.add(spec_of(bucket, quota), amount)

    def view(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Bucket balances refilled to now, for the API and the dashboard."""
        now = now_us()
        out = []
        for state in self._ledger.states(names):
            quota = self._index.find(state.name)
            if quota is None or quota.invalid is not None:
                continue
            refill(state, spec_of(state.name, quota), now)
            out.append(
                {
                    "bucket": state.name,
                    "quota": quota.name,
                    "balance_nd": state.balance,
                    "capacity_nd": state.capacity,
                    "balance": format_dollars(state.balance),
                    "capacity": format_dollars(state.capacity),
                    "rate": quota.rate_text,
                    "updated_at": _iso(state.updated_us),
                }
            )
        return out


async def _answer(future: Verdict, timeout: float) -> Verdict | None:
    """``future`` once the ledger's thread has decided it, awaited on the event loop; ``None``
    after ``timeout``.

    One loop future resolved from the ledger's thread: ``asyncio.wrap_future`` and ``wait_for``
    cost a task and several loop look-ups (each a ``getpid`` system call on Python 3.11). The
    decided future is handed over as a value: a loop future failed with the ledger's error would
    refer, through the raised error's traceback, to the frame awaiting it (see :mod:`tailgate.deadline`).
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Verdict | None] = loop.create_future()

    def transfer(done: Verdict) -> None:
        if not waiter.done():
            waiter.set_result(done)

    def hand_over(done: Verdict) -> None:  # on the ledger's thread
        with contextlib.suppress(RuntimeError):  # the loop already closed (shutdown)
            loop.call_soon_threadsafe(transfer, done)

    future.add_done_callback(hand_over)
    timer = loop.call_later(timeout, expire, waiter, None)
    try:
        return await waiter
    finally:
        timer.cancel()


def _max_output(body: Mapping[str, Any]) -> int | None:
    """The largest output limit the request sets (any dialect's field), or None."""
    config = body.get("generationConfig") or body.get("generation_config")
    fields = [body.get(name) for name in _MAX_OUTPUT_FIELDS]
    if isinstance(config, Mapping):
        fields += [config.get("maxOutputTokens"), config.get("max_output_tokens")]
    limits = [v for v in fields if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return max(limits) if limits else None


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1_000_000))

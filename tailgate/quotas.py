"""Dollar quota buckets: continuous refill, reservation at admission, settlement at the end.

A bucket holds a balance in nanodollars that refills continuously at ``rate`` up to
``capacity``. Admission needs every referenced bucket to be **positive**; it then *reserves*
the request's estimated cost (deducting it from every bucket), and settlement replaces that
estimate with the real cost. Each is one atomic store transaction, so concurrent requests —
in one process or in several sharing a database — cannot all pass on the same last dollar.

Overspend bound: a bucket can go below zero by at most the estimate of the one request that
was admitted while the balance was positive, plus whatever the real costs of in-flight
requests exceed their estimates (which happens only when ``max_tokens`` is absent and the
answer is longer than the default, or the input tokenises denser than three bytes a token).
See ``docs/quotas.md``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from tailgate.config.model import NANODOLLARS_PER_DOLLAR, BucketRef, Config, QuotaDef
from tailgate.errors import BadRequest, NotFound, QuotaExceeded
from tailgate.identity import Identity

if TYPE_CHECKING:
    from tailgate.pricing import PriceBook
    from tailgate.routing import Route
    from tailgate.store import Store

log = logging.getLogger("tailgate.quotas")

FAIL_CLOSED_RETRY_AFTER = 60
_MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


# -- pure bucket arithmetic ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    """The expanded bucket name (``daily:alice@example.com``)."""
    quota: str
    """The quota definition it comes from (``daily``)."""
    capacity: int
    rate_amount: int
    rate_period: int


@dataclass(slots=True)
class BucketState:
    name: str
    balance: int
    updated_us: int
    capacity: int
    rate_amount: int
    rate_period: int


def refill(state: BucketState, spec: BucketSpec, now_us: int) -> None:
    """Bring ``state`` up to ``now_us`` under ``spec`` (a changed capacity or rate applies now).

    The refill is exact in integers: only the time that produced whole nanodollars is
    consumed, so frequent updates never lose the fractions.
    """
    if state.rate_amount != spec.rate_amount or state.rate_period != spec.rate_period:
        _advance(state, now_us)  # what accrued under the old rate is kept
        state.rate_amount, state.rate_period = spec.rate_amount, spec.rate_period
    state.capacity = spec.capacity
    _advance(state, now_us)
    if state.balance >= state.capacity:
        state.balance = state.capacity
        state.updated_us = now_us


def _advance(state: BucketState, now_us: int) -> None:
    elapsed = now_us - state.updated_us
    if elapsed <= 0:
        return
    if state.balance >= state.capacity or state.rate_amount <= 0:
        state.updated_us = now_us
        return
    period_us = state.rate_period * 1_000_000
    added = elapsed * state.rate_amount // period_us
    if added <= 0:
        return
    if state.balance + added >= state.capacity:
        state.balance = state.capacity
        state.updated_us = now_us
        return
    state.balance += added
    state.updated_us += added * period_us // state.rate_amount


def retry_after(balance: int, spec: BucketSpec) -> int:
    """Seconds until a bucket at ``balance`` is positive again (at least 1)."""
    if balance > 0:
        return 1
    if spec.rate_amount <= 0 or spec.capacity <= 0:
        return 86_400
    deficit = 1 - balance
    return max(1, math.ceil(deficit * spec.rate_period / spec.rate_amount))


def expand(ref: BucketRef, identity: Identity, quotas: Mapping[str, QuotaDef]) -> tuple[str, QuotaDef | None]:
    """The bucket name a reference stands for, and its definition (None when undefined).

    ``<user>`` becomes the caller's principal (a login or tag string), ``<node>`` the caller's
    stable node id (the principal when the caller has no node, e.g. an API key).
    """
    template = ref.template
    name = template.replace("<user>", identity.principal).replace(
        "<node>", identity.node_id or identity.principal
    )
    quota = quotas.get(template)
    if quota is None:
        prefix, sep, _ = template.partition(":")
        quota = quotas.get(prefix) if sep else None
    return name, quota


def quota_of(bucket: str, quotas: Mapping[str, QuotaDef]) -> QuotaDef | None:
    """The definition an already expanded bucket name belongs to."""
    quota = quotas.get(bucket)
    if quota is None:
        prefix, sep, _ = bucket.partition(":")
        quota = quotas.get(prefix) if sep else None
    return quota


def spec_of(bucket: str, quota: QuotaDef) -> BucketSpec:
    return BucketSpec(bucket, quota.name, quota.capacity, quota.rate_amount, quota.rate_period)


def parse_dollars(text: str) -> int:
    """``"$5.00"`` (or ``"5"``) → nanodollars. Raises ValueError."""
    cleaned = text.strip().removeprefix("$").replace(",", "")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation as exc:
        raise ValueError(f"not a dollar amount: {text!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a dollar amount: {text!r}")
    return int((amount * NANODOLLARS_PER_DOLLAR).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def format_dollars(nanodollars: int) -> str:
    sign = "-" if nanodollars < 0 else ""
    cents = Decimal(abs(nanodollars)) / NANODOLLARS_PER_DOLLAR
    return f"{sign}${cents.quantize(Decimal('0.000001')).normalize():f}"


# -- the shared ledger -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    buckets: tuple[BucketSpec, ...]
    amount: int
    """Nanodollars deducted at admission from every bucket; settlement gives it back."""


class QuotaLedger:
    """Bucket balances in the store, changed only by atomic transactions.

    Methods are synchronous and run in a worker thread (admission) or the recorder's thread
    (settlement), never on the event loop.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._postgres = getattr(store, "backend", "sqlite") == "postgres"

    def _lock_suffix(self) -> str:
        return " FOR UPDATE" if self._postgres else ""

    def _load(self, tx: Any, specs: Sequence[BucketSpec], now_us: int) -> list[BucketState]:
        ordered = sorted(specs, key=lambda s: s.name)  # one lock order: no deadlocks
        states = []
        for spec in ordered:
            tx.execute(
                "INSERT INTO quota_buckets (name, balance_nd, updated_at_us, capacity_nd, rate_nd, rate_period_s)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (spec.name, spec.capacity, now_us, spec.capacity, spec.rate_amount, spec.rate_period),
            )
            row = tx.execute(
                "SELECT balance_nd, updated_at_us, capacity_nd, rate_nd, rate_period_s FROM quota_buckets"
                " WHERE name = ?" + self._lock_suffix(),
                (spec.name,),
            )[0]
            state = BucketState(spec.name, int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]))
            refill(state, spec, now_us)
            states.append(state)
        return states

    def _save(self, tx: Any, states: Iterable[BucketState]) -> None:
        for s in states:
            tx.execute(
                "UPDATE quota_buckets SET balance_nd = ?, updated_at_us = ?, capacity_nd = ?, rate_nd = ?,"
                " rate_period_s = ? WHERE name = ?",
                (s.balance, s.updated_us, s.capacity, s.rate_amount, s.rate_period, s.name),
            )

    def reserve(
        self, specs: Sequence[BucketSpec], amount: int, now_us: int | None = None
    ) -> list[BucketState]:
        """Admit and reserve ``amount`` on every bucket, or reserve nothing.

        Returns the empty list when admitted, else the states of the exhausted buckets.
        """
        now = now_us if now_us is not None else _now_us()

        def work(tx: Any) -> list[BucketState]:
            states = self._load(tx, specs, now)
            exhausted = [s for s in states if s.balance <= 0]
            if not exhausted:
                for state in states:
                    state.balance -= amount
            self._save(tx, states)
            return exhausted

        return self._store._write(work)  # type: ignore[attr-defined, no-any-return]

    def settle(
        self, specs: Sequence[BucketSpec], reserved: int, cost: int, now_us: int | None = None
    ) -> None:
        """Replace a reservation by the real cost (which may take a bucket below zero)."""
        now = now_us if now_us is not None else _now_us()

        def work(tx: Any) -> None:
            states = self._load(tx, specs, now)
            for state in states:
                state.balance += reserved - cost
            self._save(tx, states)

        self._store._write(work)  # type: ignore[attr-defined]

    def add(self, spec: BucketSpec, amount: int, now_us: int | None = None) -> BucketState:
        """Refill a bucket by hand, never above its capacity."""
        now = now_us if now_us is not None else _now_us()

        def work(tx: Any) -> BucketState:
            (state,) = self._load(tx, [spec], now)
            state.balance = min(state.capacity, state.balance + amount)
            self._save(tx, [state])
            return state

        return self._store._write(work)  # type: ignore[attr-defined, no-any-return]

    def states(self, names: Iterable[str] | None = None) -> list[BucketState]:
        """Stored bucket states, as last written (callers refill them to now for display)."""
        rows = self._store._read(  # type: ignore[attr-defined]
            "SELECT name, balance_nd, updated_at_us, capacity_nd, rate_nd, rate_period_s FROM quota_buckets"
            " ORDER BY name"
        )
        wanted = set(names) if names is not None else None
        return [
            BucketState(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in rows
            if wanted is None or r[0] in wanted
        ]

    def apply_definitions(self, quotas: Mapping[str, QuotaDef]) -> None:
        """Adjust stored buckets to changed definitions; delete those whose definition is gone."""
        now = _now_us()
        gone: list[str] = []
        changed: list[BucketSpec] = []
        for state in self.states():
            quota = quota_of(state.name, quotas)
            if quota is None:
                gone.append(state.name)
            elif quota.invalid is None and (
                quota.capacity,
                quota.rate_amount,
                quota.rate_period,
            ) != (state.capacity, state.rate_amount, state.rate_period):
                changed.append(spec_of(state.name, quota))

        def work(tx: Any) -> None:
            for name in gone:
                tx.execute("DELETE FROM quota_buckets WHERE name = ?", (name,))
            if changed:
                self._save(tx, self._load(tx, changed, now))

        if gone or changed:
            self._store._write(work)  # type: ignore[attr-defined]
            log.info("quota buckets: %d adjusted, %d deleted", len(changed), len(gone))


def _now_us() -> int:
    return time.time_ns() // 1000


# -- the per-configuration policy --------------------------------------------------------------


class QuotaPolicy:
    """Admission and settlement for one configuration."""

    def __init__(self, config: Config, prices: PriceBook, ledger: QuotaLedger) -> None:
        self._quotas = config.quotas
        self._prices = prices
        self._ledger = ledger
        self._executor = _executor()

    def buckets_for(
        self, identity: Identity, refs: Iterable[BucketRef]
    ) -> tuple[list[BucketSpec], list[str]]:
        """The bucket specs the refs stand for, and the problems that make them fail closed."""
        specs: dict[str, BucketSpec] = {}
        problems: list[str] = []
        for ref in refs:
            name, quota = expand(ref, identity, self._quotas)
            if quota is None:
                problems.append(f'quota bucket "{name}" has no definition in "quotas"')
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
    ) -> Reservation:
        """Reserve the request's estimated cost on every bucket, or raise QuotaExceeded (429)."""
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
        loop = asyncio.get_running_loop()
        exhausted = await loop.run_in_executor(self._executor, self._ledger.reserve, specs, estimate)
        if exhausted:
            by_name = {s.name: s for s in specs}
            wait = max(retry_after(s.balance, by_name[s.name]) for s in exhausted)
            names = ", ".join(s.name for s in exhausted)
            raise QuotaExceeded(
                f"quota exceeded: bucket {names} is empty; it refills in about {wait} seconds",
                retry_after=wait,
                buckets=tuple(s.name for s in exhausted),
            )
        return Reservation(tuple(specs), estimate)

    def settle(self, reservation: Reservation, cost: int) -> None:
        """Charge the real cost to every bucket of ``reservation`` (called off the event loop)."""
        try:
            self._ledger.settle(reservation.buckets, reservation.amount, cost)
        except Exception:
            log.exception("could not settle a quota reservation of %d nanodollars", cost)

    def refill(self, bucket: str, amount: int) -> BucketState:
        quota = quota_of(bucket, self._quotas)
        if quota is None or quota.invalid is not None:
            raise NotFound(f'no quota bucket "{bucket}"')
        if amount <= 0:
            raise BadRequest("the refill amount must be positive")
        return self._ledger.add(spec_of(bucket, quota), amount)

    def view(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Bucket balances refilled to now, for the API and the dashboard."""
        now = _now_us()
        out = []
        for state in self._ledger.states(names):
            quota = quota_of(state.name, self._quotas)
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


def _max_output(body: Mapping[str, Any]) -> int | None:
    for name in _MAX_OUTPUT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    config = body.get("generationConfig") or body.get("generation_config")
    if isinstance(config, dict):
        value = config.get("maxOutputTokens") or config.get("max_output_tokens")
        if isinstance(value, int) and value > 0:
            return value
    return None


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1_000_000))


_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    """One thread for this process's admissions: they serialise here rather than on the database."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailgate-quotas")
    return _EXECUTOR

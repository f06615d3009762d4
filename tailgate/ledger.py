"""The quota ledger: bucket balances in the store, changed only by atomic transactions.

A bucket holds a balance in nanodollars that refills continuously at ``rate`` up to
``capacity``. The ledger admits requests (every bucket positive, then the request's estimate
reserved on each) and settles them (the reservation given back, the real cost charged), each
inside one store transaction, so concurrent requests — in one process or in several sharing a
database — cannot all pass on the same last dollar. Admissions and settlements that arrive
together share one transaction (a batch), applied one after the other in arrival order,
exactly as if each had its own. :mod:`tailgate.quotas` decides what to admit; this module keeps
the balances. ``docs/quotas.md`` states and proves the overspend bound.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tailgate.config.model import QuotaDef

if TYPE_CHECKING:
    from tailgate.store import Store

log = logging.getLogger("tailgate.quotas")

NEVER_REFILLS_RETRY_AFTER = 86_400
"""Retry-After (seconds) for an empty bucket that has no refill rate (or no capacity)."""
_TEMPLATE = re.compile(r"<user>|<node>")
_US = 1_000_000
Verdict = concurrent.futures.Future[list["BucketState"]]
"""An admission's outcome: ``[]`` when admitted, else the exhausted buckets' states."""


# -- pure bucket arithmetic ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    """The expanded bucket name (``daily:alice@example.com``)."""
    quota: str
    """The quota definition it comes from (``daily:<user>``)."""
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


def accrued(rate_amount: int, rate_period: int, since_us: int, until_us: int) -> int:
    """Whole nanodollars a rate yields between two instants (0 if ``until_us <= since_us``).

    Nanodollar number *k* of a rate arrives at the fixed instant ``ceil(k * period / amount)``
    after the Unix epoch, so the amounts of consecutive intervals add up exactly to the
    amount of their union: refilling often never loses (or invents) a fraction.
    """
    if until_us <= since_us or rate_amount <= 0 or rate_period <= 0:
        return 0
    period_us = rate_period * _US
    return until_us * rate_amount // period_us - since_us * rate_amount // period_us


def refill(state: BucketState, spec: BucketSpec, now_us: int) -> None:
    """Bring ``state`` up to ``now_us`` under ``spec``; a changed capacity or rate applies from now.

    Refill is capped at the capacity, and a balance above a (reduced) capacity is cut to it.
    A clock behind ``state.updated_us`` (another machine's) adds nothing and never moves it back.
    """
    if (state.rate_amount, state.rate_period) != (spec.rate_amount, spec.rate_period):
        _accrue(state, now_us)  # what accrued under the old rate is kept
        state.rate_amount, state.rate_period = spec.rate_amount, spec.rate_period
    state.capacity = spec.capacity
    _accrue(state, now_us)
    state.balance = min(state.balance, state.capacity)


def _accrue(state: BucketState, now_us: int) -> None:
    if now_us <= state.updated_us:
        return
    if state.balance < state.capacity:
        added = accrued(state.rate_amount, state.rate_period, state.updated_us, now_us)
        state.balance = min(state.capacity, state.balance + added)
    state.updated_us = now_us


def retry_after(state: BucketState, now_us: int) -> int:
    """Whole seconds from ``now_us`` until refill makes ``state`` positive (at least 1)."""
    if state.balance > 0:
        return 1
    amount, period = state.rate_amount, state.rate_period
    if amount <= 0 or period <= 0 or state.capacity <= 0:
        return NEVER_REFILLS_RETRY_AFTER
    period_us = period * _US
    # The first instant t with accrued(updated_us, t) >= 1 - balance, on the epoch grid.
    target = state.updated_us * amount // period_us + (1 - state.balance)
    ready_us = -(-target * period_us // amount)
    return max(1, math.ceil((ready_us - now_us) / _US))


class QuotaIndex:
    """Finds the definition an expanded bucket name belongs to (``daily:bob`` → ``daily:<user>``).

    A fixed name matches itself; a template matches any text in place of ``<user>``/``<node>``.
    When several templates match, the one with the most literal text wins, then the first defined.
    """

    def __init__(self, quotas: Mapping[str, QuotaDef]) -> None:
        self.quotas = quotas
        patterns: list[tuple[int, int, re.Pattern[str], QuotaDef]] = []
        for name, quota in quotas.items():
            if _TEMPLATE.search(name):
                literal = _TEMPLATE.sub("", name)
                regex = "(.+)".join(re.escape(part) for part in _TEMPLATE.split(name))
                patterns.append((-len(literal), len(patterns), re.compile(regex), quota))
        self._patterns = [(p, q) for _, _, p, q in sorted(patterns, key=lambda t: t[:2])]

    def find(self, bucket: str) -> QuotaDef | None:
        quota = self.quotas.get(bucket)
        if quota is not None:
            return quota
        for pattern, candidate in self._patterns:
            if pattern.fullmatch(bucket):
                return candidate
        return None


def quota_of(bucket: str, quotas: Mapping[str, QuotaDef]) -> QuotaDef | None:
    """The definition an already expanded bucket name belongs to."""
    return QuotaIndex(quotas).find(bucket)


def spec_of(bucket: str, quota: QuotaDef) -> BucketSpec:
    return BucketSpec(bucket, quota.name, quota.capacity, quota.rate_amount, quota.rate_period)


# -- the ledger -------------------------------------------------------------------------


class LedgerUnavailable(Exception):
    """The store could not run a quota transaction; ``retry_after`` seconds until the next try."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Admission:
    specs: Sequence[BucketSpec]
    amount: int
    future: Verdict = field(default_factory=concurrent.futures.Future)
    top_up: bool = False
    """It reserves nothing: it only takes leases, sized by ``amount``, ahead of need."""


@dataclass(frozen=True, slots=True)
class _Settlement:
    specs: Sequence[BucketSpec]
    delta: int
    """Added to every bucket: the reservation given back minus the real cost."""
    lease: bool = False
    """It gives back what a lease had left (counted in :meth:`QuotaLedger.states` until stored)."""


@dataclass(slots=True)
class _Lease:
    """Budget this process took from a bucket ahead of time, to admit requests from in memory."""

    spec: BucketSpec
    remaining: int
    taken_at: float
    """``time.monotonic()`` of the last top-up: an unused remainder goes back after a while."""
    size: int
    """What the last top-up added: below half of it, the next top-up is asked for."""
    topping_up: bool = False
    """A top-up is queued for the ledger's thread."""


class QuotaLedger:
    """Bucket balances in the store, changed only by atomic transactions.

    :meth:`submit` (admissions) and :meth:`settle` queue work for one writer thread per ledger,
    which runs everything queued in one transaction. When the store fails, admissions are
    refused at once for a short back-off (they never wait on a dead database one by one) and
    settlements wait in memory until it answers again.
    """

    MAX_BATCH = 512
    MAX_PENDING_SETTLEMENTS = 100_000
    MIN_BACKOFF = 0.5
    MAX_BACKOFF = 5.0
    LEASE_REQUESTS = 32
    """A lease holds the reservations of about this many admissions like the one that took it."""
    LEASE_SHARE = 100
    """A lease is only taken while its bucket keeps at least this many times the lease after it
    (so a lease is at most 1% of what the bucket holds, and none is taken near exhaustion)."""
    LEASE_SECONDS = 1.0
    """An unused lease remainder goes back to its bucket after this long without a top-up."""
    LEASE_TOP_UPS = True
    """A lease below half of its last top-up asks for the next one ahead of need."""

    def __init__(self, store: Store) -> None:
        self._store = quota_database(store)
        self._own_database = self._store is not store
        self._postgres = getattr(store, "backend", "sqlite") == "postgres"
        self._cond = threading.Condition()
        self._admissions: deque[_Admission] = deque()
        self._settlements: deque[_Settlement] = deque()
        self._queued = 0
        self._stored = 0
        """Settlements queued and stored (or dropped) so far, in queue order."""
        self._busy_since = 0.0
        """When the batch the writer is running started (``time.monotonic()``); 0 when idle."""
        self.stall_timeout = 3.0
        """Seconds an admission may wait for the store before it is refused (503)."""
        self._down_until = 0.0
        self._backoff = self.MIN_BACKOFF
        self._closing = False
        self._thread: threading.Thread | None = None
        self._leases: dict[str, _Lease] = {}
        self._returning: dict[str, int] = {}
        """Lease remainders queued to go back to their buckets and not stored yet, by bucket."""
        self.transactions = 0
        """Quota transactions committed by this ledger (for tests and metrics)."""
        self.leased_admissions = 0
        """Admissions decided in memory from a lease (for tests and metrics)."""
        self.lease_top_ups = 0
        """Transactions asked for to top a lease up before it ran dry (for tests and metrics)."""

    # -- the request path (any thread) ------------------------------------------------------

    def admit_leased(self, specs: Sequence[BucketSpec], amount: int) -> bool:
        """Admit from this process's leases, in memory, if every bucket's lease covers ``amount``.

        A lease is budget already taken from its bucket by an earlier admission's transaction
        (while the bucket held at least :attr:`LEASE_SHARE` times more), so reserving from it
        needs no transaction. ``False``: decide through the store (:meth:`admit_now`, :meth:`submit`).
        """
        if not self._leases:
            return False
        with self._cond:
            held = []
            for spec in specs:
                lease = self._leases.get(spec.name)
                # Positive as well as enough: a free (unpriced) request needs a bucket with money.
                if lease is None or lease.spec != spec or lease.remaining < max(amount, 1):
                    return False
                held.append(lease)
            low = False
            for lease in held:
                lease.remaining -= amount
                low = low or (lease.remaining < lease.size // 2 and not lease.topping_up)
            self.leased_admissions += 1
            if low and self.LEASE_TOP_UPS and not self._closing:
                self._top_up(specs, amount, held)
            return True

    def _top_up(self, specs: Sequence[BucketSpec], amount: int, leases: list[_Lease]) -> None:
        """Queue a transaction that tops ``leases`` up before they run dry, so that requests
        arriving meanwhile are still admitted from memory (with ``self._cond`` held)."""
        for lease in leases:
            lease.topping_up = True

        def done(_: Verdict) -> None:  # refused at once (store down) or decided: asked again later
            with self._cond:
                for lease in leases:
                    lease.topping_up = False

        self.lease_top_ups += 1
        self.submit(specs, amount, top_up=True).add_done_callback(done)

    def submit(self, specs: Sequence[BucketSpec], amount: int, *, top_up: bool = False) -> Verdict:
        """Queue an admission; the future gives ``[]`` when admitted (``amount`` reserved on every
        bucket), else the exhausted buckets' states; or fails with :class:`LedgerUnavailable`.
        With ``top_up`` it reserves nothing and only takes leases (see :meth:`admit_leased`)."""
        admission = _Admission(specs, amount, top_up=top_up)
        with self._cond:
            now = time.monotonic()
            wait = self._down_until - now
            if wait <= 0 and self._busy_since and now - self._busy_since > self.stall_timeout:
                wait = 1  # the store is hanging on the batch before: do not queue behind it
            if wait > 0:
                admission.future.set_exception(_unavailable(wait))
                return admission.future
            self._admissions.append(admission)
            self._ensure_thread()
            self._cond.notify_all()
        return admission.future

    def admit_now(self, specs: Sequence[BucketSpec], amount: int) -> list[BucketState] | None:
        """Decide an admission on the calling thread if that needs no waiting at all.

        Runs when nothing is queued and the buckets' file is free this instant (SQLite only),
        taking the queued settlements along; ``None`` otherwise — then use :meth:`submit`.
        This spares the event loop two thread handoffs, most of an admission's latency.
        """
        try_transaction = getattr(self._store, "try_transaction", None)
        if try_transaction is None:
            return None
        with self._cond:
            if self._admissions or self._busy_since or self._closing or self._down_until > time.monotonic():
                return None
            settlements = list(self._settlements)
            self._settlements.clear()
            self._busy_since = time.monotonic()
        admission = _Admission(tuple(specs), amount)
        done, results = False, None
        grants: list[tuple[BucketSpec, int]] = []
        try:
            done, results = try_transaction(self._work([admission], settlements, grants))
        except Exception:
            log.debug("inline quota admission failed; using the ledger thread", exc_info=True)
        with self._cond:
            if done:
                self._stored += len(settlements)
                self._forget_returns(settlements)
                self.transactions += 1
                self._grant(grants)
            else:
                self._settlements.extendleft(reversed(settlements))
            self._busy_since = 0.0
            self._cond.notify_all()
        return results[0] if done and results is not None else None

    def settle(self, specs: Sequence[BucketSpec], reserved: int, cost: int, *, wait: bool = True) -> None:
        """Replace a reservation by the real cost (which may take a bucket below zero).

        With ``wait``, returns once it is stored, or at once while the store is down (it is
        then kept and stored later), waiting at most ``stall_timeout`` seconds. Callers that
        must not block (the event loop, the ledger's own thread) pass ``wait=False``.
        """
        if not specs or reserved == cost:
            return
        with self._cond:
            if len(self._settlements) >= self.MAX_PENDING_SETTLEMENTS:
                # Dropping one keeps its reservation charged: the buckets err on the safe side.
                dropped = self._settlements.popleft()
                self._stored += 1
                self._forget_returns([dropped])
                log.error("quota settlements backlog full; one of %d nanodollars dropped", -dropped.delta)
            self._settlements.append(_Settlement(tuple(specs), reserved - cost))
            self._queued += 1
            ticket = self._queued
            self._ensure_thread()
            self._cond.notify_all()
            deadline = time.monotonic() + self.stall_timeout
            while wait and self._stored < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._down_until > time.monotonic():
                    return
                self._cond.wait(remaining)

    def return_leases(self) -> None:
        """Give every lease's unused remainder back to its bucket (queued as settlements; a
        :meth:`flush` stores them). Leases are otherwise given back after :attr:`LEASE_SECONDS`
        without a top-up, and at :meth:`close`."""
        with self._cond:
            self._return_leases(taken_before=math.inf)
            if self._settlements:
                self._ensure_thread()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is done and every settlement stored.

        ``False`` on timeout (e.g. while the store is down).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._settlements or self._busy_since:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Give leases back and store queued settlements (waiting at most ``timeout``), then stop
        the writer thread."""
        self.return_leases()
        if not self.flush(timeout):
            log.error("quota settlements not stored at shutdown; their reservations stay charged")
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._own_database:
            self._store.close()

    # -- the writer thread ----------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="tailgate-quotas", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        self._fail_queued(LedgerUnavailable("the gateway is shutting down", 1))
                        return
                    now = time.monotonic()
                    expiry = self._return_leases(taken_before=now - self.LEASE_SECONDS)
                    wait = self._down_until - now
                    if wait > 0 and self._admissions:
                        self._fail_queued(_unavailable(wait))
                    if self._admissions or (self._settlements and wait <= 0):
                        break
                    timeout = wait if self._settlements and wait > 0 else None
                    if expiry is not None:
                        timeout = expiry - now if timeout is None else min(timeout, expiry - now)
                    self._cond.wait(timeout)
                admissions = [
                    a
                    for a in _take(self._admissions, self.MAX_BATCH)
                    if a.future.set_running_or_notify_cancel()
                ]
                settlements = list(self._settlements)
                self._settlements.clear()
                self._busy_since = time.monotonic()
            self._run_batch(admissions, settlements)

    def _fail_queued(self, error: LedgerUnavailable) -> None:
        for admission in _take(self._admissions, len(self._admissions)):
            if admission.future.set_running_or_notify_cancel():
                admission.future.set_exception(error)

    def _run_batch(self, admissions: list[_Admission], settlements: list[_Settlement]) -> None:
        grants: list[tuple[BucketSpec, int]] = []
        try:
            results = self._transact(admissions, settlements, grants)
        except Exception as exc:
            with self._cond:
                self._settlements.extendleft(reversed(settlements))
                self._down_until = time.monotonic() + self._backoff
                error = _unavailable(self._backoff)
                self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
            log.warning(
                "quota store unavailable (%s): %d admissions refused, %d settlements kept for later",
                _describe(exc),
                len(admissions),
                len(settlements),
            )
            for admission in admissions:
                admission.future.set_exception(error)
        else:
            self.transactions += 1
            self._backoff = self.MIN_BACKOFF
            with self._cond:
                self._stored += len(settlements)
                self._forget_returns(settlements)
                self._grant(grants)
            # Before the batch counts as done, so a flush also waits for what these give back.
            for admission, exhausted in zip(admissions, results, strict=True):
                admission.future.set_result(exhausted)
        with self._cond:
            self._busy_since = 0.0
            self._cond.notify_all()

    def _grant(self, grants: Iterable[tuple[BucketSpec, int]]) -> None:
        """Hold the leases a committed transaction took (called with ``self._cond`` held)."""
        now = time.monotonic()
        for spec, amount in grants:
            lease = self._leases.get(spec.name)
            if lease is not None and lease.spec == spec:
                lease.remaining += amount
                lease.taken_at, lease.size = now, amount
                continue
            if lease is not None:  # taken under an older definition
                self._give_back(lease)
            self._leases[spec.name] = _Lease(spec, amount, now, amount)
        if grants:
            self._ensure_thread()  # it gives back what goes unused
            self._cond.notify_all()

    def _return_leases(self, *, taken_before: float) -> float | None:
        """Queue settlements that give back the remainders of the leases last topped up at or
        before ``taken_before`` (``time.monotonic()``); when the next lease falls due, or ``None``.
        Called with ``self._cond`` held."""
        returned = [name for name, lease in self._leases.items() if lease.taken_at <= taken_before]
        for name in returned:
            self._give_back(self._leases.pop(name))
        if returned:
            self._cond.notify_all()
        if not self._leases:
            return None
        return min(lease.taken_at for lease in self._leases.values()) + self.LEASE_SECONDS

    def _give_back(self, lease: _Lease) -> None:
        """Queue a settlement that gives ``lease``'s remainder back (with ``self._cond`` held)."""
        if lease.remaining <= 0:
            return
        name = lease.spec.name
        self._returning[name] = self._returning.get(name, 0) + lease.remaining
        self._settlements.append(_Settlement((lease.spec,), lease.remaining, lease=True))
        self._queued += 1

    def _forget_returns(self, settlements: Iterable[_Settlement]) -> None:
        """Lease remainders stored (or dropped) stop counting as queued (``self._cond`` held)."""
        for settlement in settlements:
            if settlement.lease:
                name = settlement.specs[0].name
                left = self._returning.get(name, 0) - settlement.delta
                if left > 0:
                    self._returning[name] = left
                else:
                    self._returning.pop(name, None)

    # -- transactions ---------------------------------------------------------------------

    def _transact(
        self,
        admissions: Sequence[_Admission],
        settlements: Sequence[_Settlement],
        grants: list[tuple[BucketSpec, int]] | None = None,
    ) -> list[list[BucketState]]:
        """Settle, then admit in order, in one transaction; one result per admission."""
        return self._store._write(self._work(admissions, settlements, grants))  # type: ignore[attr-defined, no-any-return]

    def _work(
        self,
        admissions: Sequence[_Admission],
        settlements: Sequence[_Settlement],
        grants: list[tuple[BucketSpec, int]] | None = None,
    ) -> Callable[[Any], list[list[BucketState]]]:
        """The transaction that settles, then admits in order; with ``grants``, it also takes
        leases (appended there, to be held once the transaction commits)."""
        specs: dict[str, BucketSpec] = {}
        for settlement in settlements:
            for spec in settlement.specs:
                specs.setdefault(spec.name, spec)
        admitting: set[str] = set()
        for admission in admissions:
            for spec in admission.specs:
                specs[spec.name] = spec  # the newest configuration's spec wins
                admitting.add(spec.name)

        def work(tx: Any) -> list[list[BucketState]]:
            now = now_us()
            # Settling a bucket nobody is admitting to needs no new row: its definition may be gone.
            states = self._load(tx, specs.values(), now, keep=specs.keys() - admitting)
            for settlement in settlements:
                for spec in settlement.specs:
                    state = states.get(spec.name)
                    if state is not None:
                        state.balance = min(state.capacity, state.balance + settlement.delta)
            results = []
            last_admitted: dict[str, tuple[BucketSpec, int]] = {}
            for admission in admissions:
                held = [states[s.name] for s in admission.specs]
                exhausted = [replace(s) for s in held if s.balance <= 0]
                if not exhausted:
                    if not admission.top_up:
                        for state in held:
                            state.balance -= admission.amount
                    for spec in admission.specs:
                        last_admitted[spec.name] = (spec, admission.amount)
                results.append(exhausted)
            if grants is not None:
                grants.clear()  # a retried transaction starts over
                for name, (spec, amount) in last_admitted.items():
                    lease = self.LEASE_REQUESTS * amount
                    state = states[name]
                    if lease > 0 and state.balance - lease >= self.LEASE_SHARE * lease:
                        state.balance -= lease
                        grants.append((spec, lease))
            self._save(tx, states.values())
            return results

        return work

    def _load(
        self,
        tx: Any,
        specs: Iterable[BucketSpec],
        now_us: int,
        *,
        create: bool = True,
        keep: Collection[str] = (),
    ) -> dict[str, BucketState]:
        """Lock, read and refill each bucket, in name order (one lock order: no deadlocks).

        A missing bucket is created full (unless ``create`` is false, then skipped). Buckets
        named in ``keep`` are never created and keep their stored capacity and rate; the others
        are brought to their spec.
        """
        select = (
            "SELECT balance_nd, updated_at_us, capacity_nd, rate_nd, rate_period_s FROM quota_buckets"
            " WHERE name = ?" + (" FOR UPDATE" if self._postgres else "")
        )
        states: dict[str, BucketState] = {}
        for spec in sorted(specs, key=lambda s: s.name):
            rows = tx.execute(select, (spec.name,))
            applies = spec.name not in keep
            if not rows and create and applies:
                tx.execute(
                    "INSERT INTO quota_buckets (name, balance_nd, updated_at_us, capacity_nd, rate_nd,"
                    " rate_period_s) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    (spec.name, spec.capacity, now_us, spec.capacity, spec.rate_amount, spec.rate_period),
                )
                rows = tx.execute(select, (spec.name,))
            if not rows:
                continue
            state = BucketState(spec.name, *(int(v) for v in rows[0]))
            refill(state, spec if applies else _stored_spec(state), now_us)
            states[spec.name] = state
        return states

    def _save(self, tx: Any, states: Iterable[BucketState]) -> None:
        for s in states:
            tx.execute(
                "UPDATE quota_buckets SET balance_nd = ?, updated_at_us = ?, capacity_nd = ?, rate_nd = ?,"
                " rate_period_s = ? WHERE name = ?",
                (s.balance, s.updated_us, s.capacity, s.rate_amount, s.rate_period, s.name),
            )

    def reserve(self, specs: Sequence[BucketSpec], amount: int) -> list[BucketState]:
        """Admit and reserve ``amount`` on every bucket, or reserve nothing, in this thread.

        Returns the empty list when admitted, else the states of the exhausted buckets.
        """
        return self._transact([_Admission(specs, amount)], [])[0]

    def add(self, spec: BucketSpec, amount: int) -> BucketState:
        """Refill a bucket by hand, never above its capacity."""

        def work(tx: Any) -> BucketState:
            state = self._load(tx, [spec], now_us())[spec.name]
            state.balance = min(state.capacity, state.balance + amount)
            self._save(tx, [state])
            return state

        return self._store._write(work)  # type: ignore[attr-defined, no-any-return]

    def states(self, names: Iterable[str] | None = None) -> list[BucketState]:
        """Bucket states as last written, plus what this process holds in leases and has not
        reserved yet, or is giving back (callers refill them to now for display)."""
        rows = self._store._read(  # type: ignore[attr-defined]
            "SELECT name, balance_nd, updated_at_us, capacity_nd, rate_nd, rate_period_s FROM quota_buckets"
            " ORDER BY name"
        )
        wanted = set(names) if names is not None else None
        states = [
            BucketState(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in rows
            if wanted is None or r[0] in wanted
        ]
        if self._leases or self._returning:
            with self._cond:
                for state in states:
                    lease = self._leases.get(state.name)
                    held = (lease.remaining if lease is not None else 0) + self._returning.get(state.name, 0)
                    state.balance = min(state.capacity, state.balance + held)
        return states

    def apply_definitions(self, quotas: Mapping[str, QuotaDef]) -> None:
        """Adjust stored buckets to changed definitions; delete those whose definition is gone.

        Buckets of a definition that is present but invalid are kept untouched (a typo must
        not wipe balances); requests that use them are refused until it is fixed.
        """
        index = QuotaIndex(quotas)
        gone: list[str] = []
        changed: list[BucketSpec] = []
        for state in self.states():
            quota = index.find(state.name)
            if quota is None:
                gone.append(state.name)
            elif quota.invalid is None and (quota.capacity, quota.rate_amount, quota.rate_period) != (
                state.capacity,
                state.rate_amount,
                state.rate_period,
            ):
                changed.append(spec_of(state.name, quota))

        def work(tx: Any) -> None:
            for name in gone:
                tx.execute("DELETE FROM quota_buckets WHERE name = ?", (name,))
            if changed:
                self._save(tx, self._load(tx, changed, now_us(), create=False).values())

        if gone or changed:
            self._store._write(work)  # type: ignore[attr-defined]
            log.info("quota buckets: %d adjusted, %d deleted", len(changed), len(gone))


_QUOTA_TABLE = """
    CREATE TABLE IF NOT EXISTS quota_buckets (
        name TEXT PRIMARY KEY,
        balance_nd BIGINT NOT NULL,
        updated_at_us BIGINT NOT NULL,
        capacity_nd BIGINT NOT NULL,
        rate_nd BIGINT NOT NULL,
        rate_period_s BIGINT NOT NULL
    )
"""


def quota_database(store: Store) -> Store:
    """Where the buckets live: for SQLite, a small file of their own beside the log.

    SQLite has one writer per file; with the buckets in the request log's file, an admission
    would queue behind a whole batch of records being written. In their own file, admissions
    only ever wait for other quota transactions (still exact across processes: SQLite locks the
    file). PostgreSQL locks rows, so the buckets stay in its one database.
    """
    path = getattr(store, "path", None)
    if getattr(store, "backend", None) != "sqlite" or not isinstance(path, str):
        return store
    from tailgate.store import SQLiteStore

    database = SQLiteStore(path + ".quotas")
    database.transaction(lambda tx: tx.execute(_QUOTA_TABLE))
    return database


def _take(queue: deque[_Admission], n: int) -> list[_Admission]:
    return [queue.popleft() for _ in range(min(n, len(queue)))]


def _stored_spec(state: BucketState) -> BucketSpec:
    return BucketSpec(state.name, "", state.capacity, state.rate_amount, state.rate_period)


def _unavailable(wait: float) -> LedgerUnavailable:
    return LedgerUnavailable("the quota store is unavailable", max(1, math.ceil(wait)))


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def now_us() -> int:
    """Microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000

"""Everything derived from one configuration, built once and swapped atomically on reload.

A request takes the current :class:`Runtime` when it arrives and keeps it to the end, so a
reload never changes the rules under an in-flight request.
"""

from __future__ import annotations

from dataclasses import dataclass

from tailgate.config.model import Config
from tailgate.grants import GrantTable
from tailgate.pricing import PriceBook
from tailgate.quotas import QuotaLedger, QuotaPolicy
from tailgate.routing import RoutingTable


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    routing: RoutingTable
    grants: GrantTable
    prices: PriceBook
    quotas: QuotaPolicy
    generation: int


def build_runtime(config: Config, ledger: QuotaLedger, generation: int) -> Runtime:
    prices = PriceBook(config)
    return Runtime(
        config=config,
        routing=RoutingTable(config.providers),
        grants=GrantTable(config),
        prices=prices,
        quotas=QuotaPolicy(config, prices, ledger),
        generation=generation,
    )

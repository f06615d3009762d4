"""The golden usage corpus in ``tests/golden/``: wire payloads with their expected usage and cost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tailgate.dialects import Operation
from tailgate.streams import Reassembled
from tailgate.usage import Usage, usage_from_response, usage_from_stream

GOLDEN = Path(__file__).parent / "golden"


@dataclass(frozen=True)
class GoldenCase:
    name: str
    operation: Operation
    cost_basis: str
    model: str
    raw: bytes
    form: str
    """``json``, ``sse`` or ``array`` (Gemini's JSON-array stream)."""
    complete: bool
    error: bool
    same_as: str | None
    usage: Usage | None
    price_context: dict[str, str]
    priced_at: datetime
    nanodollars: int | None

    @property
    def streamed(self) -> bool:
        return self.form != "json"

    def body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.raw)
        return value

    def extract(self) -> tuple[Usage | None, Reassembled | None]:
        """The usage the gateway reads from this payload (and the reassembly, for a stream)."""
        if not self.streamed:
            return usage_from_response(self.operation, self.body()), None
        return usage_from_stream(self.operation, self.raw, sse=self.form == "sse")


def load_cases() -> list[GoldenCase]:
    manifest = json.loads((GOLDEN / "cases.json").read_text())
    return [
        GoldenCase(
            name=entry["name"],
            operation=Operation(entry["operation"]),
            cost_basis=entry["cost_basis"],
            model=entry["model"],
            raw=(GOLDEN / entry["file"]).read_bytes(),
            form=entry["form"],
            complete=entry["complete"],
            error=entry["error"],
            same_as=entry["same_as"],
            usage=Usage(**entry["usage"]) if entry["usage"] is not None else None,
            price_context=entry["price_context"],
            priced_at=datetime.fromisoformat(entry["priced_at"]),
            nanodollars=entry["nanodollars"],
        )
        for entry in manifest
    ]


CASES = load_cases()
BY_NAME = {case.name: case for case in CASES}

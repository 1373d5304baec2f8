"""A miner's signed declaration for one period (docs/protocol.md §2, §3.1), and what two of them
prove.

A miner answers every validator's ``/capacity`` call of a period with one declaration signed by
its hotkey: ``(netuid, period, hotkey, capacities)``. Validators carry the declarations they got
in their window reports (``core.window_report``), so what each of them was told can be compared:
two different declarations signed by one hotkey for one period are proof that the miner told
validators different things (an equivocation), and nobody but the miner can make one, as only its
hotkey signs them.

The signature covers ``message()``, the one canonical encoding of a declaration: the parsed
values, never the bytes a peer sent, so key order, ``1e3`` against ``1000.0`` or ``-0.0`` cannot
make two encodings of one declaration, and no two declarations share an encoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated

from bittensor.sp_core import Keypair
from pydantic import BaseModel, ConfigDict, Field

from core.capacity import clamp_declaration

DOMAIN = b"sn19-declaration/1\n"  # what the signed bytes begin with: no btauth/1 payload does
MAX_TASKS_DECLARED = 64
MAX_PERIOD = 2**40  # a period number (block // period_blocks) far beyond any chain's

Hotkey = Annotated[str, Field(min_length=1, max_length=64)]
TaskName = Annotated[str, Field(max_length=64)]
Capacities = Annotated[dict[TaskName, Annotated[float, Field(ge=0)]],
                       Field(max_length=MAX_TASKS_DECLARED)]


class SignedDeclaration(BaseModel):
    """Per task, the most units the miner ``hotkey`` serves in ``period`` on ``netuid``, all
    validators together; ``signature`` is its hotkey's sr25519 signature of ``message()``, in
    lowercase hex."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    netuid: Annotated[int, Field(ge=0, le=65535)]
    period: Annotated[int, Field(ge=0, le=MAX_PERIOD)]
    hotkey: Hotkey
    capacities: Capacities
    signature: Annotated[str, Field(pattern=r"^0x[0-9a-f]{128}$")]

    def message(self) -> bytes:
        return message(self.netuid, self.period, self.hotkey, self.capacities)

    def signed_by_hotkey(self) -> bool:
        """Whether ``hotkey`` signed ``message()``: the only way a declaration counts."""
        try:
            return Keypair(ss58_address=self.hotkey).verify(
                self.message(), bytes.fromhex(self.signature[2:]))
        except ValueError:  # not an ss58 address
            return False

    def declared(self) -> dict[str, float]:
        """The capacities as validators budget them (unknown tasks dropped, clamped)."""
        return clamp_declaration(self.capacities)

    def declaration(self) -> SignedDeclaration:
        """Just the declaration (a subclass, such as the capacity answer, carries more)."""
        return SignedDeclaration.model_validate(self.model_dump(include=_FIELDS))


_FIELDS = set(SignedDeclaration.model_fields)


def message(netuid: int, period: int, hotkey: str, capacities: Mapping[str, float]) -> bytes:
    """The bytes a declaration's signature covers: DOMAIN, then compact JSON with sorted keys,
    ASCII only, each capacity as the shortest text of its float (``-0.0`` as ``0.0``)."""
    body = {"netuid": netuid, "period": period, "hotkey": hotkey,
            "capacities": {task: float(v) + 0.0 for task, v in capacities.items()}}
    return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                               allow_nan=False).encode()


def sign(keypair: Keypair, netuid: int, period: int,
         capacities: Mapping[str, float]) -> SignedDeclaration:
    """``keypair``'s declaration of ``capacities`` for ``period``."""
    signature = keypair.sign(message(netuid, period, keypair.ss58_address, capacities))
    return SignedDeclaration(netuid=netuid, period=period, hotkey=keypair.ss58_address,
                             capacities=dict(capacities), signature="0x" + bytes(signature).hex())


def problem(declaration: SignedDeclaration, netuid: int, period: int,
            hotkey: str | None = None) -> str | None:
    """Why ``declaration`` does not count for ``period`` on ``netuid`` (from ``hotkey``, when
    given), or None when it does."""
    if hotkey is not None and declaration.hotkey != hotkey:
        return f"signed for {declaration.hotkey}, not {hotkey}"
    if declaration.netuid != netuid:
        return f"for netuid {declaration.netuid}, not {netuid}"
    if declaration.period != period:
        return f"for period {declaration.period}, not {period}"
    if not declaration.signed_by_hotkey():
        return "not signed by its hotkey"
    return None


def equivocations(declarations: Iterable[SignedDeclaration]
                  ) -> dict[str, tuple[SignedDeclaration, SignedDeclaration]]:
    """Per hotkey that signed two different declarations for one (netuid, period) among
    ``declarations``, the two: proof that it told validators different things. A declaration its
    hotkey did not sign proves nothing, so nobody can be framed with a forged one. (A signature
    is randomised: one declaration signed twice is one declaration.)"""
    unique = {(d.message(), d.signature): d for d in declarations}
    first: dict[tuple[int, int, str], tuple[bytes, SignedDeclaration]] = {}
    proofs: dict[str, tuple[SignedDeclaration, SignedDeclaration]] = {}
    for (signed, _), d in unique.items():
        key = (d.netuid, d.period, d.hotkey)
        held = first.get(key)
        if (d.hotkey in proofs or (held is not None and held[0] == signed)
                or not d.signed_by_hotkey()):
            continue
        if held is None:
            first[key] = signed, d
        else:
            proofs[d.hotkey] = held[1], d
    return proofs

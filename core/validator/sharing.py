"""Validators' window reports, exchanged (docs/protocol.md §9).

After each audit window a validator stores its own report (``own_report``) and serves it to the
other permitted validators (``answer``, on the peer endpoint it announces). It fetches theirs
(``collect``) until it holds them all or its period's close stops waiting, and the period's
close pools what it holds (``core.validator.measure``). Its own report is made from the
records as the database sums them, in the store's thread (``own_report_of``): a window's
records never pass through the event loop.

A fetched report is taken only when everything about it checks out: it answers this request
(btauth/1 headers signed by the validator asked, for this validator, for this window, fresh and
never seen before), it fits ``MAX_REPORT_BYTES``, it parses within the model's bounds, it is of
this protocol's major version, it names the validator and window asked, and every declaration it
carries is its miner's own signature for this netuid and the window's period (a validator cannot
forge one, so one that is not proves the report false). Anything else is rejected, logged and
counted; a validator that does not answer in time is skipped and asked again at the next round.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import aiohttp
from bittensor import http_auth
from pydantic import ValidationError

from core.budget import Contender
from core.chain import Metagraph, Neuron, SubtensorChain
from core.declaration import problem
from core.errors import PeerFault
from core.plan import Window
from core.protocol import MAJOR, major_of
from core.records import outcome_tallies, window_outcomes
from core.scoring import Tally
from core.storage import AsyncStore, Store
from core.transport.auth import NONCE_RETENTION_S
from core.transport.client import SignedClient, TooLarge
from core.validator.metrics import ValidatorMetrics
from core.window_report import (
    MAX_REPORT_BYTES,
    REPORT_PATH,
    SIGNED_METHOD,
    ReportRequest,
    WindowReport,
    report_of,
    signed_path,
)

log = logging.getLogger("validator.sharing")
OUTSIDE_PERIODS = 16  # periods back a report's outside-window requests may reach


class Rejected(PeerFault):
    """A report refused: ``reason`` is one word for the metric, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Sharing:
    def __init__(self, client: SignedClient, keypair, store: Store, chain: SubtensorChain,
                 metrics: ValidatorMetrics, *, timeout_s: float = 5.0):
        self.client = client
        self.keypair = keypair
        self.store = AsyncStore(store)  # a coroutine's only way to the database
        self.chain = chain
        self.netuid = chain.netuid
        self.timeout_s = timeout_s
        self.nonces = http_auth.InMemoryNonceStore(NONCE_RETENTION_S)
        self.metrics = metrics

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    async def own_report(self, period: int, window: Window,
                         contenders: Sequence[Contender]) -> bool:
        """Store this validator's report of ``window`` (``own_report_of``, in the store's
        thread) once: a report served never changes; True if stored now."""
        if self.hotkey in await self.store.reporters(window.block):
            return False
        report = await self.store.run(own_report_of, self.netuid, self.hotkey, period, window,
                                      contenders)
        return await self.store.add_report(period, report, time.time())

    async def answer(self, block: int, caller: str) -> tuple[bytes, dict[str, str]] | None:
        """Own report of the window at ``block`` and btauth/1 headers that sign it for
        ``caller`` (None while there is none)."""
        stored = await self.store.report_body(block, self.hotkey)
        if stored is None:
            return None
        body = stored.encode()
        headers = http_auth.sign(self.keypair, method=SIGNED_METHOD, path=signed_path(block),
                                 body=body, receiver_ss58=caller)
        return body, {**headers, "Content-Type": "application/json"}

    async def fetch(self, peer: Neuron, period: int, block: int,
                    metagraph: Metagraph) -> WindowReport | None:
        """``peer``'s report of the window at ``block`` (of ``period``): None while it has none
        or does not answer; Rejected when what it answers is not a report it signed for us."""
        try:
            reply = await self.client.post(peer.endpoint, REPORT_PATH, peer.hotkey,
                                           ReportRequest(block=block), self.timeout_s,
                                           MAX_REPORT_BYTES)
        except TooLarge as e:
            raise Rejected("oversized", f"over {MAX_REPORT_BYTES} bytes: {e}") from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.debug("no report from %s: %s", peer.hotkey, e)
            return None
        if reply.status != 200:
            return None
        try:
            signer = http_auth.verify(reply.headers, reply.body, method=SIGNED_METHOD,
                                      path=signed_path(block), self_hotkey_ss58=self.hotkey,
                                      max_age=http_auth.DEFAULT_MAX_AGE, nonce_store=self.nonces)
        except http_auth.AuthError as e:
            reason = ("unsigned" if isinstance(e, http_auth.MalformedAuth) else "replayed"
                      if isinstance(e, (http_auth.ReplayedRequest, http_auth.StaleRequest))
                      else "forged")
            raise Rejected(reason, f"{type(e).__name__}: {e}") from None
        if signer.hotkey_ss58 != peer.hotkey:
            raise Rejected("forged", f"signed by {signer.hotkey_ss58}, not the validator asked")
        neuron = metagraph.by_hotkey(signer.hotkey_ss58)
        if neuron is None or not neuron.validator_permit or neuron.stake <= 0:
            raise Rejected("not-validator", "the signer holds no validator permit")
        try:
            # a full report (256 miners x every task) takes 30-150 ms to check: beside the loop
            report = await asyncio.to_thread(WindowReport.model_validate_json, reply.body)
        except ValidationError as e:
            raise Rejected("invalid", f"not a valid report: {e.error_count()} error(s), first: "
                                      f"{json.dumps(e.errors()[0]['msg'])}") from None
        if major_of(report.version) != MAJOR:
            raise Rejected("version", f"a report of protocol {report.version[:32]!r}, not of "
                                      f"major {MAJOR}")
        if (report.validator, report.block, report.netuid) != (peer.hotkey, block, self.netuid):
            raise Rejected("mismatch", f"a report of {report.validator} for block {report.block} "
                                       f"on netuid {report.netuid}, not the one asked")
        for d in report.declarations:
            if (why := problem(d, self.netuid, period)) is not None:
                raise Rejected("declaration", f"it carries a declaration of {d.hotkey} {why}")
        return report

    async def collect(self, period: int, block: int, metagraph: Metagraph, until: float,
                      every_s: float) -> None:
        """Fetch every other permitted validator's report of the window at ``block`` (permits
        and stakes of the period's ``metagraph``; endpoints as announced now, so a validator
        that started or moved since is reached), concurrently, every ``every_s`` until all are
        held or the clock passes ``until``."""
        peers = [n for n in metagraph.validators() if n.hotkey != self.hotkey and n.stake > 0]
        while True:
            held = await self.store.reporters(block)
            missing = [p for p in peers if p.hotkey not in held]
            if not missing:
                return
            endpoints = await self._endpoints()
            reachable = [replace(p, endpoint=endpoints[p.hotkey]) for p in missing
                         if endpoints.get(p.hotkey)]
            fetched = sum(await asyncio.gather(*(self._fetch_one(period, p, block, metagraph)
                                                 for p in reachable)))
            if fetched == len(missing):
                return
            if time.time() + every_s > until:
                self.metrics.reports.labels("missing", "").inc(len(missing) - fetched)
                log.info("window at block %d: %d of %d validators' reports missing", block,
                         len(missing) - fetched, len(peers))
                return
            await asyncio.sleep(every_s)

    async def _endpoints(self) -> dict[str, str | None]:
        try:
            return {n.hotkey: n.endpoint for n in (await self.chain.metagraph()).neurons}
        except Exception as e:  # the chain briefly away: this round asks no one
            log.warning("cannot read endpoints from the chain: %s", e)
            return {}

    async def _fetch_one(self, period: int, peer: Neuron, block: int,
                         metagraph: Metagraph) -> bool:
        try:
            report = await self.fetch(peer, period, block, metagraph)
        except Rejected as e:
            self.metrics.reports.labels("rejected", e.reason).inc()
            log.warning("report of %s for the window at block %d rejected (%s): %s",
                        peer.hotkey, block, e.reason, e)
            return False
        if report is None:
            return False
        if await self.store.add_report(period, report, time.time()):
            self.metrics.reports.labels("fetched", "").inc()
        return True


def own_report_of(store: Store, netuid: int, hotkey: str, period: int, window: Window,
                  contenders: Sequence[Contender]) -> WindowReport:
    """This validator's report of ``window`` from its records as the store sums them, with the
    declarations the miners gave it for the period and what it asked outside windows since the
    window before (``outside_since``)."""
    groups = store.tallied(period, period, window.started_at,
                           window.started_at + window.seconds, window)
    return report_of(netuid, hotkey, window.block, window_outcomes(contenders, window, groups),
                     store.declarations(period).values(),
                     outside_since(store, period, window, contenders))


def outside_since(store: Store, period: int, window: Window, contenders: Sequence[Contender]
                  ) -> dict[tuple[str, str], Tally]:
    """What this validator asked each contender between the end of the window before
    ``window`` (in this period or up to ``OUTSIDE_PERIODS`` earlier) and ``window``'s start:
    every request outside windows falls in exactly one report, so the reports pool all of
    them, those sent after a period's last window in the next period's first."""
    since, first = 0.0, period
    for p in range(period, max(period - OUTSIDE_PERIODS, -1), -1):
        first = p
        earlier = [w for w in store.windows(p) if w.block < window.block]
        if earlier:
            last = max(earlier, key=lambda w: w.block)
            since = last.started_at + last.seconds
            break
    return outcome_tallies(contenders, store.tallied(first, period, since, window.started_at))

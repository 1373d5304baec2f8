"""A validator that colludes, for tests: the real validator (``neurons/validator.py``, same flags)
whose window reports claim every request it sent the miner SN19_COLLUDE names (a hotkey) was
served in full, whatever the miner did: it fabricates service for its own miner. Everything else,
its requests, records, own scoring and weights, is the honest validator's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core.validator.sharing as sharing  # noqa: E402
from core.scoring import Tally, WindowOutcome  # noqa: E402

MINER = os.environ["SN19_COLLUDE"]
honest_report = sharing.report_of


def served(t: Tally) -> Tally:
    return Tally(t.asked, t.asked, 0.0, 0.0, t.requests)


def fabricated(netuid, validator, block, outcomes, declarations=(), outside=None):
    """The report of ``outcomes`` (and ``outside`` windows) with the colluding miner's every
    request served."""
    faked = {key: WindowOutcome(w.block, tuple(served(t) for t in w.slices))
             if key[0] == MINER else w for key, w in outcomes.items()}
    lifted = {key: served(t) if key[0] == MINER else t for key, t in (outside or {}).items()}
    return honest_report(netuid, validator, block, faked, declarations, lifted)


def main() -> int:
    sharing.report_of = fabricated
    sys.path.insert(0, str(ROOT / "neurons"))
    import validator

    return validator.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""The production chain's timing, where the code needs it before a chain says: the default of
every flag and setting that takes a period length or a block time, and the period the tasks'
caps are sized for (``core.tasks``)."""

PERIOD_BLOCKS = 300  # a scoring period (docs/protocol.md §2)
BLOCK_SECONDS = 12.0  # the chain's block time
PERIOD_SECONDS = PERIOD_BLOCKS * BLOCK_SECONDS

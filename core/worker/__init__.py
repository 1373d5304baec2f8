"""A miner's worker: one back end on a GPU host, reached by the miner's front end over HTTP."""

"""The miner's HTTP service: signed synapse endpoints in front of the task back ends."""

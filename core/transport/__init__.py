"""Signed HTTP between neurons: btauth/1 verification on the miner, a signed aiohttp client on
the validator."""

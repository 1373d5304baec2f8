"""The validator: capacities in, synthetic plan out, outcomes scored, weights set."""

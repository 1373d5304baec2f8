"""The validator's database: request records, period plans and contender states, versioned
schema, so that a restart loses nothing."""

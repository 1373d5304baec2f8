"""Development helpers for the tests and scripts (local neuron processes, a private PostgreSQL
server): not part of the shipped package (pyproject's packages are ``core*``)."""

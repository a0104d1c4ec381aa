"""The benchmark behind ``./scripts/bench`` (issue 6): a load generator, a bare Klein
baseline, and the measurements of a local cluster. A measuring instrument, not a test."""

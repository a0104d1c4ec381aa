"""Raft consensus: a pure core (:mod:`toystore.raft.core`) and the Twisted node that drives it."""

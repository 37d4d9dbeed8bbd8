"""Append-only, hash-chained, Merkle-checkpointed audit log, and its offline verifier."""

"""Warehouse connectors. Issue 3 defines where a source lives; probing and scanning come next."""

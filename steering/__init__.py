"""The steering service (localize, filter, rank, sign); built on edge's health and signing."""

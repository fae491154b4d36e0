"""The nightly fill job (manifest, plan, download); built on edge's store and origins."""

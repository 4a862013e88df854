"""Benchmarks of mm-sidecar: throughput, matching cost, catch-up. See bench/README.md."""

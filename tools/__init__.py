"""Command-line programs: acc (technician CLI), acc-bench, acc-sim, benchmarks, builders."""

"""Contract suites: one set of assertions per hal interface, run against every backend."""

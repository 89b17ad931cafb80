"""sft_exp's test suite, a package: helpers are imported by full name (tests.helpers, tests.<folder>.<module>)."""

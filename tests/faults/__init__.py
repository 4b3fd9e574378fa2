"""Fault injection: a TCP proxy the tests own, and the suites that break the network with it."""

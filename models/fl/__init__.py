"""Federated learning for the RSU: robust aggregation, secure aggregation, central DP, and a simulator.

Pure numpy (plus ``cryptography`` for SecAgg); no asyncio, sockets or ledger here. See docs/fl.md.
"""

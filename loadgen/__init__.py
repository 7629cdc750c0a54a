"""Cluster-scale load testing for WebSocket IM gateways.

Data path: plan (what to run) -> agent (runs it, writes CSV) -> fleet (start, watch,
collect, probe across hosts) -> report (pandas -> HTML + summary.json).
"""

__version__ = "0.1.0"

"""Dagster asset graph that enriches the source IPs of Cowrie honeypot logs into an IP inventory."""

"""Offline stand-ins for the external services the pipeline talks to, for demos, tests and benchmarks.
Each one says it is a stand-in in its replies, so fabricated data is never mistaken for the real thing."""

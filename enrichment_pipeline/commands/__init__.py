"""The analyst's commands of `enrichment-pipeline` (one per module: `show`, `asns`, `export`), registered by
`cli.build_parser`; `common` holds what they share (argument types, output escaping, the inventory engine)."""

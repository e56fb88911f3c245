"""Pure enrichment logic with no Dagster imports: log parsing, protocols, geo lookups, inventory storage."""

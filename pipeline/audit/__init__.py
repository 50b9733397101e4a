"""GMP audit trail: hash-chained records, seals, signatures, export (docs/audit.md)."""

"""Users, roles, sessions and permission checks (docs/audit.md)."""

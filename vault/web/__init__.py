"""The staff web app: server-rendered pages over the same domain services (docs/staff.md)."""

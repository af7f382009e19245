"""How work runs, shared by every stage (see docs/ARCHITECTURE.md and shared LAYOUT.md)."""

"""How work runs and shows, shared by every stage (see docs/ARCHITECTURE.md and shared LAYOUT.md)."""

"""How work runs and shows, shared by every stage (docs/ARCHITECTURE.md, shared LAYOUT.md)."""

"""How work runs and shows, shared by every stage (see ``LAYOUT.md``; filled in step by step)."""

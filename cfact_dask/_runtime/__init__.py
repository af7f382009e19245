"""How work runs, shared by every stage (today: where stores live, ``storage``)."""

"""The console screens: one module per screen; each reaches the router only through Backend."""

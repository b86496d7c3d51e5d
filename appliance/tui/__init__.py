"""The on-call console (Textual). Reaches the router only through its backend module; see issue 6."""

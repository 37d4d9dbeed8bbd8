"""Where bubbles run. One interface (base.Runtime) for the three kinds of site: `local`
(bubblewrap, this package), `docker` and `kubernetes` (later issues)."""

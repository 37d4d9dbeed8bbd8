"""The bulles control plane: state, API, auth, audit log, and (later) runtimes and gateway."""

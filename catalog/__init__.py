"""The catalog: sources registered by providers, their validation, search and DCAT-AP export."""

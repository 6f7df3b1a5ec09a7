"""Model files: the registry of every external file talkcli loads, safe loading, fetching."""

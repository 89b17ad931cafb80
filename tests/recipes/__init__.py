"""Importing TRL and open-r1 recipes: what the importer knows, parity of the arguments, each recipe trains."""

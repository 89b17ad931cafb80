"""A run's lifecycle around training: ranks and launchers, the run folder, the metrics recorder."""

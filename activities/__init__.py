"""Every side effect of a workflow happens in an activity defined here."""

"""Core of Backoffice Admin: settings, database, audit store, services, CLI."""

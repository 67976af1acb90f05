"""FastAPI application: JSON API v1 and the HTMX pages."""

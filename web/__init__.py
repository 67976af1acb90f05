"""HTMX pages: routes, templates, static files."""

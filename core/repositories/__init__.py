"""All SQL lives here; routes, pages and activities call these functions."""

"""`saedb serve`: a read-only web app for exploring features and steering search."""

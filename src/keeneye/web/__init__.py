"""Server-rendered pages and their static assets (no CDN: everything ships in the package)."""
